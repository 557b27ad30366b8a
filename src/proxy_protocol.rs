//! PROXY protocol headers (HAProxy's spec, versions 1 and 2): the ones securesock sends to tell the
//! upstream who the client really is (and in version 2 what the TLS layer learnt about it), and the
//! parser for those a load balancer sends in front of the ClientHello (`--accept-proxy`).
//!
//! The parser is pure: it looks at bytes, never at a socket, and says how far the header goes, so
//! the caller can read exactly that much and leave the ClientHello to OpenSSL. Both addresses of a header are always of one family: an IPv4 client seen on an IPv6
//! listener (`::ffff:a.b.c.d`) is reported as IPv4 when the other side is IPv4 too, and as
//! IPv4-mapped IPv6 otherwise, because the format has no way to mix families.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use openssl::ssl::SslRef;
use openssl::x509::X509VerifyResult;

use crate::tls::common_name;

/// The longest version 1 header the spec allows, CRLF included.
pub const V1_MAX_LEN: usize = 107;

/// The 12 bytes that open every version 2 header.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// Version 2, command PROXY.
const V2_VERSION_PROXY: u8 = 0x21;
/// Version 2, command LOCAL: the balancer's own connection (a health check), no client behind it.
const V2_VERSION_LOCAL: u8 = 0x20;

/// The most a version 2 header may declare after its 16 fixed bytes. Addresses take at most 216
/// (UNIX sockets); the rest is room for the TLVs balancers add (AWS, GCP and Azure send tens of
/// bytes). A longer header is refused rather than buffered.
pub const V2_MAX_BODY: usize = 1024;

/// The longest header the parser accepts, of either version.
pub const MAX_HEADER: usize = 16 + V2_MAX_BODY;
/// Address family and transport: TCP over IPv4, TCP over IPv6.
const V2_TCP4: u8 = 0x11;
const V2_TCP6: u8 = 0x21;

/// TLV types and SSL sub-types, as the spec numbers them.
pub const PP2_TYPE_ALPN: u8 = 0x01;
pub const PP2_TYPE_AUTHORITY: u8 = 0x02;
pub const PP2_TYPE_SSL: u8 = 0x20;
pub const PP2_SUBTYPE_SSL_VERSION: u8 = 0x21;
pub const PP2_SUBTYPE_SSL_CN: u8 = 0x22;
pub const PP2_SUBTYPE_SSL_CIPHER: u8 = 0x23;

/// Bits of the PP2_TYPE_SSL `client` field.
pub const PP2_CLIENT_SSL: u8 = 0x01;
pub const PP2_CLIENT_CERT_CONN: u8 = 0x02;
pub const PP2_CLIENT_CERT_SESS: u8 = 0x04;

/// A value longer than this is left out rather than cut: a shortened name is worse than none to a
/// upstream that makes access decisions on it. Real SNI (≤ 255 bytes), ALPN and CN values are far
/// shorter, and the header's 16-bit length can never overflow.
pub const MAX_TLV_VALUE: usize = 1024;

/// What the TLS layer knows about a connection, for the version 2 header.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFacts {
    /// Protocol version as OpenSSL names it, e.g. `TLSv1.3`.
    pub version: String,
    /// Cipher suite as OpenSSL names it, e.g. `TLS_AES_128_GCM_SHA256`.
    pub cipher: String,
    /// The server name the client asked for (SNI).
    pub sni: Option<String>,
    /// The application protocol agreed with ALPN.
    pub alpn: Option<Vec<u8>>,
    /// The session carries a client certificate.
    pub client_cert: bool,
    /// That certificate was presented on this connection, not in an earlier one this connection
    /// resumed.
    pub client_cert_this_connection: bool,
    /// The client certificate verified against the configured CAs.
    pub client_cert_verified: bool,
    /// The client certificate's subject common name.
    pub client_cn: Option<String>,
}

impl TlsFacts {
    /// Reads the facts from a server-side connection whose handshake is complete.
    pub fn from_ssl(ssl: &SslRef) -> TlsFacts {
        let cert = ssl.peer_certificate();
        let client_cn = cert.as_ref().and_then(common_name);
        TlsFacts {
            version: ssl.version_str().to_string(),
            cipher: ssl
                .current_cipher()
                .map(|c| c.name().to_string())
                .unwrap_or_default(),
            sni: crate::tls::requested_name(ssl),
            alpn: ssl.selected_alpn_protocol().map(<[u8]>::to_vec),
            client_cert: cert.is_some(),
            client_cert_this_connection: cert.is_some() && !ssl.session_reused(),
            client_cert_verified: cert.is_some() && ssl.verify_result() == X509VerifyResult::OK,
            client_cn,
        }
    }
}

/// Puts both addresses in one family: IPv4 when both are IPv4 (or IPv4-mapped IPv6), IPv6 with
/// IPv4 mapped otherwise.
fn same_family(src: SocketAddr, dst: SocketAddr) -> (SocketAddr, SocketAddr) {
    let (s, d) = (src.ip().to_canonical(), dst.ip().to_canonical());
    let (s, d) = match (s, d) {
        (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => (s, d),
        _ => (IpAddr::V6(as_v6(s)), IpAddr::V6(as_v6(d))),
    };
    (
        SocketAddr::new(s, src.port()),
        SocketAddr::new(d, dst.port()),
    )
}

fn as_v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// A version 1 (text) header: `PROXY TCP4|TCP6 src dst sport dport\r\n`.
pub fn v1(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let (src, dst) = same_family(src, dst);
    let proto = if src.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {proto} {} {} {} {}\r\n",
        src.ip(),
        dst.ip(),
        src.port(),
        dst.port()
    )
    .into_bytes()
}

/// Appends one TLV, unless its value is too long to be sent whole.
fn tlv(out: &mut Vec<u8>, kind: u8, value: &[u8]) {
    if value.len() > MAX_TLV_VALUE {
        return;
    }
    out.push(kind);
    // Fits: value.len() <= MAX_TLV_VALUE < u16::MAX.
    out.extend_from_slice(&(value.len() as u16).to_be_bytes());
    out.extend_from_slice(value);
}

/// A version 2 (binary) header for a TLS connection: addresses, then PP2_TYPE_AUTHORITY (SNI),
/// PP2_TYPE_ALPN, and PP2_TYPE_SSL with the version, cipher and client certificate CN.
pub fn v2(src: SocketAddr, dst: SocketAddr, tls: &TlsFacts) -> Vec<u8> {
    let (src, dst) = same_family(src, dst);
    let mut body = Vec::with_capacity(128);
    let family = match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            body.extend_from_slice(&s.octets());
            body.extend_from_slice(&d.octets());
            V2_TCP4
        }
        (s, d) => {
            body.extend_from_slice(&as_v6(s).octets());
            body.extend_from_slice(&as_v6(d).octets());
            V2_TCP6
        }
    };
    body.extend_from_slice(&src.port().to_be_bytes());
    body.extend_from_slice(&dst.port().to_be_bytes());

    if let Some(sni) = &tls.sni {
        tlv(&mut body, PP2_TYPE_AUTHORITY, sni.as_bytes());
    }
    if let Some(alpn) = &tls.alpn {
        tlv(&mut body, PP2_TYPE_ALPN, alpn);
    }

    let mut client = PP2_CLIENT_SSL;
    if tls.client_cert {
        client |= PP2_CLIENT_CERT_SESS;
    }
    if tls.client_cert_this_connection {
        client |= PP2_CLIENT_CERT_CONN;
    }
    // The spec: zero only when a certificate was presented and verified.
    let verify: u32 = if tls.client_cert && tls.client_cert_verified {
        0
    } else {
        1
    };
    let mut ssl = vec![client];
    ssl.extend_from_slice(&verify.to_be_bytes());
    tlv(&mut ssl, PP2_SUBTYPE_SSL_VERSION, tls.version.as_bytes());
    if let Some(cn) = &tls.client_cn {
        tlv(&mut ssl, PP2_SUBTYPE_SSL_CN, cn.as_bytes());
    }
    tlv(&mut ssl, PP2_SUBTYPE_SSL_CIPHER, tls.cipher.as_bytes());
    tlv(&mut body, PP2_TYPE_SSL, &ssl);

    let mut out = Vec::with_capacity(16 + body.len());
    out.extend_from_slice(&V2_SIGNATURE);
    out.push(V2_VERSION_PROXY);
    out.push(family);
    // Fits: 36 address bytes plus at most four TLVs of MAX_TLV_VALUE bytes each (the SSL one
    // holding two more) stays far below u16::MAX.
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// What an inbound header says about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inbound {
    /// A relayed connection: the client's address and the address it connected to.
    Proxied { src: SocketAddr, dst: SocketAddr },
    /// The sender's own connection (v2 LOCAL, v1 UNKNOWN, or an address family other than TCP):
    /// the TCP peer is the client.
    Local,
}

/// How far a buffer holding the start of a connection is from a complete header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parse {
    /// A whole header of `len` bytes opens the buffer; the bytes after it are not the header's.
    Complete { header: Inbound, len: usize },
    /// Every byte so far belongs to a header that is not complete yet: the caller may consume
    /// them all and must read more.
    Incomplete,
}

/// Why the bytes are not an acceptable header. `reason` texts are short and stable, for logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseError(pub &'static str);

/// Parses the PROXY header at the start of `buf` (version 1 or 2, told apart by their
/// signatures). Never looks further than the header's own end: the result for a complete header
/// is the same whatever follows it, and every strict prefix of a header is `Incomplete`.
pub fn parse(buf: &[u8]) -> Result<Parse, ParseError> {
    const V1_SIGNATURE: &[u8] = b"PROXY ";
    let is_prefix = |sig: &[u8]| {
        let n = buf.len().min(sig.len());
        buf[..n] == sig[..n]
    };
    if buf.is_empty() {
        return Ok(Parse::Incomplete);
    }
    if is_prefix(&V2_SIGNATURE) {
        return parse_v2(buf);
    }
    if is_prefix(V1_SIGNATURE) {
        return parse_v1(buf);
    }
    Err(ParseError("no PROXY header"))
}

fn parse_v1(buf: &[u8]) -> Result<Parse, ParseError> {
    let window = &buf[..buf.len().min(V1_MAX_LEN)];
    let Some(lf) = window.iter().position(|&b| b == b'\n') else {
        return if buf.len() >= V1_MAX_LEN {
            Err(ParseError("v1 header without CRLF within 107 bytes"))
        } else {
            Ok(Parse::Incomplete)
        };
    };
    let len = lf + 1;
    let line = window[..lf]
        .strip_suffix(b"\r")
        .ok_or(ParseError("v1 header line ends without CR"))?;
    let line = std::str::from_utf8(line).map_err(|_| ParseError("v1 header is not ASCII"))?;
    let fields: Vec<&str> = line.split(' ').collect();
    if fields.get(1) == Some(&"UNKNOWN") {
        // The sender could not tell the client's address; whatever follows is to be ignored.
        return Ok(Parse::Complete {
            header: Inbound::Local,
            len,
        });
    }
    let [_, proto, src, dst, sport, dport] = fields[..] else {
        return Err(ParseError("v1 header does not have six fields"));
    };
    let v4 = match proto {
        "TCP4" => true,
        "TCP6" => false,
        _ => return Err(ParseError("v1 protocol is not TCP4, TCP6 or UNKNOWN")),
    };
    let addr = |text: &str| -> Result<IpAddr, ParseError> {
        let ip: IpAddr = text
            .parse()
            .map_err(|_| ParseError("v1 address is not an IP address"))?;
        if ip.is_ipv4() == v4 {
            Ok(ip)
        } else {
            Err(ParseError("v1 address does not match its protocol"))
        }
    };
    let port = |text: &str| -> Result<u16, ParseError> {
        // The spec: a decimal integer in [0..65535], digits only (no sign, no space: Rust's own
        // parser would take `+5`), and no leading zero, as the spec asks of the addresses'
        // numbers.
        let digits = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
        if !digits || (text.len() > 1 && text.starts_with('0')) {
            return Err(ParseError("v1 port is not a plain decimal number"));
        }
        text.parse()
            .map_err(|_| ParseError("v1 port is not a plain decimal number"))
    };
    Ok(Parse::Complete {
        header: Inbound::Proxied {
            src: SocketAddr::new(addr(src)?, port(sport)?),
            dst: SocketAddr::new(addr(dst)?, port(dport)?),
        },
        len,
    })
}

fn parse_v2(buf: &[u8]) -> Result<Parse, ParseError> {
    if buf.len() < 16 {
        return Ok(Parse::Incomplete);
    }
    let declared = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if declared > V2_MAX_BODY {
        return Err(ParseError("v2 header longer than 1024 bytes"));
    }
    let command = buf[12];
    if command >> 4 != 2 {
        return Err(ParseError("v2 header of an unknown version"));
    }
    if command != V2_VERSION_PROXY && command != V2_VERSION_LOCAL {
        return Err(ParseError("v2 command is neither PROXY nor LOCAL"));
    }
    let len = 16 + declared;
    if buf.len() < len {
        return Ok(Parse::Incomplete);
    }
    let body = &buf[16..len];
    if command == V2_VERSION_LOCAL {
        return Ok(Parse::Complete {
            header: Inbound::Local,
            len,
        });
    }
    let port = |i: usize| u16::from_be_bytes([body[i], body[i + 1]]);
    let header = match buf[13] {
        V2_TCP4 => {
            if body.len() < 12 {
                return Err(ParseError("v2 TCP4 addresses cut short"));
            }
            let ip = |i: usize| IpAddr::from([body[i], body[i + 1], body[i + 2], body[i + 3]]);
            Inbound::Proxied {
                src: SocketAddr::new(ip(0), port(8)),
                dst: SocketAddr::new(ip(4), port(10)),
            }
        }
        V2_TCP6 => {
            if body.len() < 36 {
                return Err(ParseError("v2 TCP6 addresses cut short"));
            }
            let ip = |i: usize| {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&body[i..i + 16]);
                IpAddr::from(octets)
            };
            Inbound::Proxied {
                src: SocketAddr::new(ip(0), port(32)),
                dst: SocketAddr::new(ip(16), port(34)),
            }
        }
        // UNSPEC, UDP, UNIX sockets: no TCP client address to use, so the TCP peer stands.
        _ => Inbound::Local,
    };
    Ok(Parse::Complete { header, len })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;
    use std::net::{Ipv4Addr, SocketAddrV6};

    /// A parsed header, written from the spec without the encoder's helpers.
    #[derive(Debug, PartialEq)]
    struct Parsed {
        src: SocketAddr,
        dst: SocketAddr,
        /// TLVs by type (each appears at most once in what we send).
        tlvs: BTreeMap<u8, Vec<u8>>,
    }

    fn parse_v1(h: &[u8]) -> Result<Parsed, String> {
        if h.len() > V1_MAX_LEN {
            return Err(format!("{} bytes", h.len()));
        }
        let text = std::str::from_utf8(h).map_err(|e| e.to_string())?;
        let line = text.strip_suffix("\r\n").ok_or("no CRLF")?;
        if line.contains(['\r', '\n']) {
            return Err("CR or LF inside".into());
        }
        let f: Vec<&str> = line.split(' ').collect();
        let [proxy, proto, s, d, sp, dp] = f[..] else {
            return Err(format!("{} fields", f.len()));
        };
        if proxy != "PROXY" {
            return Err("no PROXY".into());
        }
        let s: IpAddr = s.parse().map_err(|_| "bad src")?;
        let d: IpAddr = d.parse().map_err(|_| "bad dst")?;
        let want_v4 = match proto {
            "TCP4" => true,
            "TCP6" => false,
            _ => return Err("bad proto".into()),
        };
        if s.is_ipv4() != want_v4 || d.is_ipv4() != want_v4 {
            return Err("family mismatch".into());
        }
        // The spec forbids leading zeros in ports.
        for p in [sp, dp] {
            if p.len() > 1 && p.starts_with('0') {
                return Err("leading zero".into());
            }
        }
        let sp: u16 = sp.parse().map_err(|_| "bad sport")?;
        let dp: u16 = dp.parse().map_err(|_| "bad dport")?;
        Ok(Parsed {
            src: SocketAddr::new(s, sp),
            dst: SocketAddr::new(d, dp),
            tlvs: BTreeMap::new(),
        })
    }

    fn parse_tlvs(mut b: &[u8]) -> Result<BTreeMap<u8, Vec<u8>>, String> {
        let mut out = BTreeMap::new();
        while !b.is_empty() {
            if b.len() < 3 {
                return Err("truncated TLV header".into());
            }
            let len = usize::from(u16::from_be_bytes([b[1], b[2]]));
            let value = b.get(3..3 + len).ok_or("TLV overruns")?;
            if out.insert(b[0], value.to_vec()).is_some() {
                return Err(format!("TLV {:#x} twice", b[0]));
            }
            b = &b[3 + len..];
        }
        Ok(out)
    }

    fn parse_v2(h: &[u8]) -> Result<Parsed, String> {
        if h.len() < 16 || h[..12] != V2_SIGNATURE {
            return Err("no signature".into());
        }
        if h[12] != 0x21 {
            return Err("not v2 PROXY".into());
        }
        let len = usize::from(u16::from_be_bytes([h[14], h[15]]));
        if h.len() != 16 + len {
            return Err(format!("length {} but {} bytes follow", len, h.len() - 16));
        }
        let body = &h[16..];
        let (src, dst, rest) = match h[13] {
            0x11 if body.len() >= 12 => {
                let ip = |i: usize| IpAddr::from([body[i], body[i + 1], body[i + 2], body[i + 3]]);
                let port = |i: usize| u16::from_be_bytes([body[i], body[i + 1]]);
                (
                    SocketAddr::new(ip(0), port(8)),
                    SocketAddr::new(ip(4), port(10)),
                    &body[12..],
                )
            }
            0x21 if body.len() >= 36 => {
                let ip = |i: usize| {
                    let o: [u8; 16] = body[i..i + 16].try_into().unwrap();
                    IpAddr::from(o)
                };
                let port = |i: usize| u16::from_be_bytes([body[i], body[i + 1]]);
                (
                    SocketAddr::new(ip(0), port(32)),
                    SocketAddr::new(ip(16), port(34)),
                    &body[36..],
                )
            }
            f => return Err(format!("family {f:#x} or short body")),
        };
        Ok(Parsed {
            src,
            dst,
            tlvs: parse_tlvs(rest)?,
        })
    }

    /// Splits a PP2_TYPE_SSL value into client bits, verify, and sub-TLVs.
    fn parse_ssl(v: &[u8]) -> (u8, u32, BTreeMap<u8, Vec<u8>>) {
        assert!(v.len() >= 5, "SSL TLV too short");
        let verify = u32::from_be_bytes(v[1..5].try_into().unwrap());
        (v[0], verify, parse_tlvs(&v[5..]).unwrap())
    }

    fn facts() -> TlsFacts {
        TlsFacts {
            version: "TLSv1.3".into(),
            cipher: "TLS_AES_128_GCM_SHA256".into(),
            sni: Some("example.com".into()),
            alpn: None,
            client_cert: false,
            client_cert_this_connection: false,
            client_cert_verified: false,
            client_cn: None,
        }
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v1_matches_the_spec_examples() {
        assert_eq!(
            v1(sa("192.168.0.1:56324"), sa("192.168.0.11:443")),
            b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
        );
        assert_eq!(
            v1(sa("[2001:db8::1]:1"), sa("[::1]:443")),
            b"PROXY TCP6 2001:db8::1 ::1 1 443\r\n"
        );
    }

    #[test]
    fn mapped_client_on_ipv6_listener_is_ipv4_when_both_are() {
        let src = sa("[::ffff:10.0.0.7]:5000");
        let dst = sa("[::ffff:127.0.0.1]:12345");
        assert_eq!(
            v1(src, dst),
            b"PROXY TCP4 10.0.0.7 127.0.0.1 5000 12345\r\n"
        );
        let p = parse_v2(&v2(src, dst, &facts())).unwrap();
        assert_eq!(p.src, sa("10.0.0.7:5000"));
        assert_eq!(p.dst, sa("127.0.0.1:12345"));
    }

    #[test]
    fn mixed_families_become_mapped_ipv6() {
        let h = v1(sa("10.0.0.7:5000"), sa("[2001:db8::2]:443"));
        assert_eq!(h, b"PROXY TCP6 ::ffff:10.0.0.7 2001:db8::2 5000 443\r\n");
        let p = parse_v2(&v2(sa("10.0.0.7:5000"), sa("[2001:db8::2]:443"), &facts())).unwrap();
        assert_eq!(p.src, sa("[::ffff:10.0.0.7]:5000"));
    }

    #[test]
    fn v2_layout_byte_by_byte() {
        let h = v2(sa("1.2.3.4:258"), sa("5.6.7.8:443"), &facts());
        assert_eq!(
            &h[..12],
            b"\x0D\x0A\x0D\x0A\x00\x0D\x0A\x51\x55\x49\x54\x0A"
        );
        assert_eq!(h[12], 0x21);
        assert_eq!(h[13], 0x11);
        assert_eq!(&h[16..28], &[1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 1, 187]);
        // AUTHORITY first: type, 16-bit length, name.
        assert_eq!(&h[28..31], &[0x02, 0, 11]);
        assert_eq!(&h[31..42], b"example.com");
        let p = parse_v2(&h).unwrap();
        let (client, verify, subs) = parse_ssl(&p.tlvs[&PP2_TYPE_SSL]);
        assert_eq!(client, PP2_CLIENT_SSL);
        assert_ne!(verify, 0, "no certificate: verify must be non-zero");
        assert_eq!(subs[&PP2_SUBTYPE_SSL_VERSION], b"TLSv1.3");
        assert_eq!(subs[&PP2_SUBTYPE_SSL_CIPHER], b"TLS_AES_128_GCM_SHA256");
        assert!(!subs.contains_key(&PP2_SUBTYPE_SSL_CN));
    }

    #[test]
    fn verified_client_certificate_sets_flags_cn_and_zero_verify() {
        let f = TlsFacts {
            client_cert: true,
            client_cert_this_connection: true,
            client_cert_verified: true,
            client_cn: Some("client".into()),
            ..facts()
        };
        let p = parse_v2(&v2(sa("1.2.3.4:1"), sa("5.6.7.8:2"), &f)).unwrap();
        let (client, verify, subs) = parse_ssl(&p.tlvs[&PP2_TYPE_SSL]);
        assert_eq!(
            client,
            PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS
        );
        assert_eq!(verify, 0);
        assert_eq!(subs[&PP2_SUBTYPE_SSL_CN], b"client");
    }

    #[test]
    fn resumed_session_certificate_is_sess_only() {
        let f = TlsFacts {
            client_cert: true,
            client_cert_verified: true,
            ..facts()
        };
        let p = parse_v2(&v2(sa("1.2.3.4:1"), sa("5.6.7.8:2"), &f)).unwrap();
        let (client, _, _) = parse_ssl(&p.tlvs[&PP2_TYPE_SSL]);
        assert_eq!(client, PP2_CLIENT_SSL | PP2_CLIENT_CERT_SESS);
    }

    #[test]
    fn overlong_values_are_left_out_not_cut() {
        let f = TlsFacts {
            sni: Some("a".repeat(MAX_TLV_VALUE + 1)),
            ..facts()
        };
        let p = parse_v2(&v2(sa("1.2.3.4:1"), sa("5.6.7.8:2"), &f)).unwrap();
        assert!(!p.tlvs.contains_key(&PP2_TYPE_AUTHORITY));
    }

    fn any_ip() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<[u8; 4]>().prop_map(|o| IpAddr::from(Ipv4Addr::from(o))),
            any::<[u8; 16]>().prop_map(|o| IpAddr::from(Ipv6Addr::from(o))),
            // IPv4 clients on an IPv6 listener.
            any::<[u8; 4]>().prop_map(|o| IpAddr::V6(Ipv4Addr::from(o).to_ipv6_mapped())),
        ]
    }

    fn any_facts() -> impl Strategy<Value = TlsFacts> {
        (
            prop::option::of("[a-z0-9.-]{1,253}"),
            prop::option::of(prop::collection::vec(any::<u8>(), 1..32)),
            prop::option::of(".{0,64}"),
            any::<(bool, bool, bool)>(),
            prop_oneof![Just("TLSv1.2"), Just("TLSv1.3")],
            "[A-Z0-9_-]{1,40}",
        )
            .prop_map(
                |(sni, alpn, cn, (cert, conn, ok), version, cipher)| TlsFacts {
                    version: version.into(),
                    cipher,
                    sni,
                    alpn,
                    client_cert: cert,
                    client_cert_this_connection: cert && conn,
                    client_cert_verified: ok,
                    client_cn: cn,
                },
            )
    }

    proptest! {
        #[test]
        fn every_header_parses_back(
            s in any_ip(), d in any_ip(), sp in any::<u16>(), dp in any::<u16>(),
            f in any_facts(),
        ) {
            let (src, dst) = (SocketAddr::new(s, sp), SocketAddr::new(d, dp));
            let both_v4 = s.to_canonical().is_ipv4() && d.to_canonical().is_ipv4();
            for p in [parse_v1(&v1(src, dst)), parse_v2(&v2(src, dst, &f))] {
                let p = p.map_err(TestCaseError::fail)?;
                // Same addresses and ports, one family, IPv4 exactly when both ends are.
                prop_assert_eq!(p.src.ip().to_canonical(), s.to_canonical());
                prop_assert_eq!(p.dst.ip().to_canonical(), d.to_canonical());
                prop_assert_eq!((p.src.port(), p.dst.port()), (sp, dp));
                prop_assert_eq!(p.src.is_ipv4(), both_v4);
                prop_assert_eq!(p.dst.is_ipv4(), both_v4);
            }
            let p = parse_v2(&v2(src, dst, &f)).unwrap();
            prop_assert_eq!(p.tlvs.get(&PP2_TYPE_AUTHORITY).map(Vec::as_slice), f.sni.as_ref().map(|s| s.as_bytes()));
            prop_assert_eq!(p.tlvs.get(&PP2_TYPE_ALPN), f.alpn.as_ref());
            let (client, verify, subs) = parse_ssl(&p.tlvs[&PP2_TYPE_SSL]);
            prop_assert_eq!(client & PP2_CLIENT_SSL, PP2_CLIENT_SSL);
            prop_assert_eq!(client & PP2_CLIENT_CERT_SESS != 0, f.client_cert);
            prop_assert_eq!(client & PP2_CLIENT_CERT_CONN != 0, f.client_cert_this_connection);
            prop_assert_eq!(verify == 0, f.client_cert && f.client_cert_verified);
            prop_assert_eq!(&subs[&PP2_SUBTYPE_SSL_VERSION], f.version.as_bytes());
            prop_assert_eq!(&subs[&PP2_SUBTYPE_SSL_CIPHER], f.cipher.as_bytes());
            prop_assert_eq!(subs.get(&PP2_SUBTYPE_SSL_CN).map(Vec::as_slice), f.client_cn.as_ref().map(|c| c.as_bytes()));
        }
    }

    #[test]
    fn longest_v1_header_fits_the_spec_limit() {
        let max = Ipv6Addr::new(
            0xffff, 0xfffe, 0xfffd, 0xfffc, 0xfffb, 0xfffa, 0xfff9, 0xfff8,
        );
        let a = SocketAddr::V6(SocketAddrV6::new(max, 65535, 0, 0));
        let h = v1(a, a);
        assert_eq!(h.len(), 104);
        assert!(parse_v1(&h).is_ok());
    }

    /// A well-formed header and the bytes that follow it on the wire.
    fn complete(buf: &[u8]) -> (Inbound, usize) {
        match parse(buf) {
            Ok(Parse::Complete { header, len }) => (header, len),
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(buf)),
        }
    }

    #[test]
    fn inbound_v1_and_v2_give_the_client_address() {
        let src = sa("203.0.113.7:40000");
        let dst = sa("10.0.0.1:443");
        let hello = b"\x16\x03\x01 the ClientHello";
        for header in [v1(src, dst), v2(src, dst, &facts())] {
            let mut wire = header.clone();
            wire.extend_from_slice(hello);
            assert_eq!(
                complete(&wire),
                (Inbound::Proxied { src, dst }, header.len())
            );
        }
        let v6 = complete(b"PROXY TCP6 2001:db8::1 ::1 1 443\r\n");
        assert_eq!(
            v6.0,
            Inbound::Proxied {
                src: sa("[2001:db8::1]:1"),
                dst: sa("[::1]:443")
            }
        );
    }

    #[test]
    fn inbound_local_and_unknown_keep_the_tcp_peer() {
        assert_eq!(complete(b"PROXY UNKNOWN\r\n").0, Inbound::Local);
        assert_eq!(
            complete(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n").0,
            Inbound::Local
        );
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(complete(&local), (Inbound::Local, 16));
        let mut unix = V2_SIGNATURE.to_vec();
        unix.extend_from_slice(&[0x21, 0x31, 0, 216]);
        unix.extend_from_slice(&[0; 216]);
        assert_eq!(complete(&unix), (Inbound::Local, 232));
    }

    #[test]
    fn inbound_errors_name_the_problem() {
        let err = |b: &[u8]| parse(b).unwrap_err().0;
        assert_eq!(err(b"\x16\x03\x01\x02\x00"), "no PROXY header");
        assert_eq!(err(b"GET / HTTP/1.1\r\n"), "no PROXY header");
        let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 100]].concat();
        assert_eq!(err(&long), "v1 header without CRLF within 107 bytes");
        assert_eq!(
            err(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n"),
            "v1 header line ends without CR"
        );
        assert_eq!(
            err(b"PROXY TCP4 1.2.3.4 ::1 1 2\r\n"),
            "v1 address does not match its protocol"
        );
        for port in [
            "01", "00", "+5", "-1", "65536", "99999", "1_0", "0x10", "\u{0661}", "5\t",
        ] {
            for header in [
                format!("PROXY TCP4 1.2.3.4 5.6.7.8 {port} 2\r\n"),
                format!("PROXY TCP4 1.2.3.4 5.6.7.8 2 {port}\r\n"),
            ] {
                assert!(
                    parse(header.as_bytes()).is_err(),
                    "{header:?} should be refused"
                );
            }
        }
        assert_eq!(
            err(b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n"),
            "v1 port is not a plain decimal number"
        );
        assert_eq!(
            err(b"PROXY TCP4 1.2.3.4 5.6.7.8 +5 2\r\n"),
            "v1 port is not a plain decimal number"
        );
        assert_eq!(
            err(b"PROXY TCP4 1.2.3.4 5.6.7.8 5 +2\r\n"),
            "v1 port is not a plain decimal number"
        );
        // Two spaces make an empty field: not six fields any more.
        assert_eq!(
            err(b"PROXY TCP4 1.2.3.4 5.6.7.8  5 2\r\n"),
            "v1 header does not have six fields"
        );
        // The bounds themselves are ports.
        assert_eq!(
            complete(b"PROXY TCP4 1.2.3.4 5.6.7.8 0 65535\r\n").0,
            Inbound::Proxied {
                src: sa("1.2.3.4:0"),
                dst: sa("5.6.7.8:65535")
            }
        );
        let mut big = V2_SIGNATURE.to_vec();
        big.extend_from_slice(&[0x21, 0x11, 0x04, 0x01]);
        assert_eq!(err(&big), "v2 header longer than 1024 bytes");
        let mut short = V2_SIGNATURE.to_vec();
        short.extend_from_slice(&[0x21, 0x11, 0, 4, 1, 2, 3, 4]);
        assert_eq!(err(&short), "v2 TCP4 addresses cut short");
    }

    /// A TCP6 header of 107 bytes plus `extra` (`ffff` groups) in its destination: the source
    /// written with an embedded IPv4 part, the longest form IPv6 text has (45 characters).
    fn v1_tcp6_of(extra: &str) -> Vec<u8> {
        format!(
            "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255 ffff:ffff:ffff:ffff:ffff:ffff:ffff:f{extra} 65535 65535\r\n"
        )
        .into_bytes()
    }

    #[test]
    fn a_v1_header_of_107_bytes_is_taken_and_one_of_108_refused() {
        // The spec's worst case: UNKNOWN with two long-hand IPv6 addresses is 107 bytes.
        let ffff = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
        let unknown = format!("PROXY UNKNOWN {ffff} {ffff} 65535 65535\r\n");
        assert_eq!(unknown.len(), V1_MAX_LEN);
        assert_eq!(complete(unknown.as_bytes()), (Inbound::Local, V1_MAX_LEN));
        let at_limit = v1_tcp6_of("");
        assert_eq!(at_limit.len(), V1_MAX_LEN);
        let mut wire = at_limit.clone();
        wire.extend_from_slice(b"\x16\x03\x01");
        assert_eq!(
            complete(&wire),
            (
                Inbound::Proxied {
                    src: sa("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535"),
                    dst: sa("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:f]:65535"),
                },
                V1_MAX_LEN
            )
        );
        assert_eq!(parse(&at_limit[..V1_MAX_LEN - 1]), Ok(Parse::Incomplete));
        // One byte over, as a well-formed line or as UNKNOWN: refused, and as soon as 107 bytes
        // hold no LF, not only once the LF arrives.
        let unknown_over = format!("PROXY UNKNOWN {ffff} {ffff} 65535 655350\r\n");
        for over in [v1_tcp6_of("f"), unknown_over.into_bytes()] {
            assert_eq!(over.len(), V1_MAX_LEN + 1);
            for seen in [&over[..], &over[..V1_MAX_LEN]] {
                assert_eq!(
                    parse(seen),
                    Err(ParseError("v1 header without CRLF within 107 bytes"))
                );
            }
            assert_eq!(parse(&over[..V1_MAX_LEN - 1]), Ok(Parse::Incomplete));
        }
    }

    /// A v2 header written out byte by byte as HAProxy sends one with TLVs (ALPN, AUTHORITY, a
    /// NOOP for padding, an SSL TLV with sub-TLVs), not with the encoder above.
    #[test]
    fn a_hand_written_v2_header_with_tlvs_gives_its_addresses_and_length() {
        #[rustfmt::skip]
        let header: &[u8] = &[
            0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
            0x21, // v2, PROXY
            0x11, // TCP over IPv4
            0x00, 0x32, // 50 bytes follow: 12 of addresses, 38 of TLVs
            198, 51, 100, 23, // source 198.51.100.23
            192, 0, 2, 10, // destination 192.0.2.10
            0xC3, 0x50, // source port 50000
            0x01, 0xBB, // destination port 443
            0x01, 0x00, 0x02, b'h', b'2', // ALPN "h2"
            0x02, 0x00, 0x0B, b'e', b'x', b'a', b'm', b'p', b'l', b'e', b'.', b'c', b'o', b'm',
            0x04, 0x00, 0x01, 0x00, // NOOP, one byte of padding
            0x20, 0x00, 0x0C, // SSL, 12 bytes
            0x01, 0x00, 0x00, 0x00, 0x00, // client: SSL; verify 0
            0x21, 0x00, 0x04, b'T', b'L', b'S', b'1', // SSL_VERSION (4 bytes shown)
        ];
        assert_eq!(header.len(), 16 + 0x32);
        let mut wire = header.to_vec();
        wire.extend_from_slice(b"\x16\x03\x01\x00\x05");
        assert_eq!(
            complete(&wire),
            (
                Inbound::Proxied {
                    src: sa("198.51.100.23:50000"),
                    dst: sa("192.0.2.10:443"),
                },
                header.len()
            )
        );
        for cut in 0..header.len() {
            assert_eq!(parse(&header[..cut]), Ok(Parse::Incomplete), "{cut}");
        }
    }

    #[test]
    fn truncated_headers_are_incomplete() {
        let mut v2_declares_more = V2_SIGNATURE.to_vec();
        v2_declares_more.extend_from_slice(&[0x21, 0x11, 0, 100, 1, 2, 3, 4]);
        assert_eq!(parse(&v2_declares_more), Ok(Parse::Incomplete));
        assert_eq!(parse(b"PROXY TCP4 1.2.3.4"), Ok(Parse::Incomplete));
        assert_eq!(parse(b"PRO"), Ok(Parse::Incomplete));
        assert_eq!(parse(b""), Ok(Parse::Incomplete));
    }

    /// Headers as a balancer may send them: either version, any addresses, v2 with TLVs.
    fn any_header() -> impl Strategy<Value = Vec<u8>> {
        (
            any_ip(),
            any_ip(),
            any::<u16>(),
            any::<u16>(),
            any_facts(),
            any::<bool>(),
        )
            .prop_map(|(s, d, sp, dp, f, text)| {
                let (src, dst) = (SocketAddr::new(s, sp), SocketAddr::new(d, dp));
                if text { v1(src, dst) } else { v2(src, dst, &f) }
            })
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_and_never_reach_past_the_header(
            bytes in prop::collection::vec(any::<u8>(), 0..2048),
        ) {
            if let Ok(Parse::Complete { len, .. }) = parse(&bytes) {
                prop_assert!(len <= bytes.len());
                prop_assert!(len <= MAX_HEADER);
                if bytes.starts_with(&V2_SIGNATURE) {
                    let declared = usize::from(u16::from_be_bytes([bytes[14], bytes[15]]));
                    prop_assert_eq!(len, 16 + declared);
                }
                // The verdict depends on the header's bytes alone.
                prop_assert_eq!(parse(&bytes[..len]), parse(&bytes));
            }
        }

        #[test]
        fn signature_led_garbage_never_panics(
            v2 in any::<bool>(),
            tail in prop::collection::vec(any::<u8>(), 0..1200),
        ) {
            let mut bytes = if v2 { V2_SIGNATURE.to_vec() } else { b"PROXY ".to_vec() };
            bytes.extend_from_slice(&tail);
            if let Ok(Parse::Complete { len, .. }) = parse(&bytes) {
                prop_assert!(len <= bytes.len());
                prop_assert_eq!(parse(&bytes[..len]), parse(&bytes));
            }
        }

        #[test]
        fn every_prefix_of_a_header_is_incomplete_and_the_whole_is_exact(
            header in any_header(),
            after in prop::collection::vec(any::<u8>(), 0..64),
        ) {
            for cut in 0..header.len() {
                prop_assert_eq!(parse(&header[..cut]), Ok(Parse::Incomplete));
            }
            let mut wire = header.clone();
            wire.extend_from_slice(&after);
            match parse(&wire) {
                Ok(Parse::Complete { len, .. }) => prop_assert_eq!(len, header.len()),
                other => prop_assert!(false, "{:?}", other),
            }
        }
    }
}
