//! The TLS policy as a client meets it, enumerated against the real binary: every cipher suite and
//! key exchange group the linked libssl knows is offered on its own, by a client that would accept
//! anything (`@SECLEVEL=0`), and the set the server accepts must equal the profile's list exactly.
//! A suite or group slipped into a profile (or dropped from one) fails `cargo test`, not only the
//! sslyze scan.
//!
//! Each offer is one connection whose verdict is read from the server's own log line for that
//! client port: `result=ok`, or a refusal with its `kind=` when the client got the server's alert.
//! A client that could not build a ClientHello at all (a suite or group it cannot use on its own,
//! such as SRP without a login) is reported as not offered rather than counted as a refusal.

// On the binary: each verdict is read from the server's `conn` line on stderr.

use std::collections::BTreeSet;
use std::net::TcpStream;
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;

use openssl::ssl::{Ssl, SslContext, SslMethod, SslVerifyMode, SslVersion};

use crate::support;
use crate::support::{PATIENCE, Server, default_certs, now_unix, write_cert};

/// Every refusal's verdict is read from its own log line, so none may be left out of the log.
const EVERY_LINE: [&str; 2] = ["--log-failed-handshakes", "0"];

const GREETING: &[u8] = b"Hello, secure world!";

/// Mozilla intermediate v6.0's TLS 1.2 suites, written out here so that a change to
/// `securesock::tls::INTERMEDIATE_TLS12_CIPHERS` has to be made in two places on purpose.
const INTERMEDIATE_TLS12: [&str; 6] = [
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
];

/// The TLS 1.3 suites both profiles accept.
const TLS13: [&str; 3] = [
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
];

/// Every TLS 1.3 suite with a registered code point that OpenSSL implements or may implement
/// (RFC 8446 and the integrity-only RFC 9150 ones); those this libssl does not know are skipped.
const ALL_TLS13: [&str; 7] = [
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
    "TLS_AES_128_CCM_SHA256",
    "TLS_AES_128_CCM_8_SHA256",
    "TLS_SHA256_SHA256",
    "TLS_SHA384_SHA384",
];

/// The profiles' key exchange groups, and the post-quantum hybrid they put first where libssl
/// has it (OpenSSL 3.5 and later).
const GROUPS: [&str; 3] = ["X25519", "prime256v1", "secp384r1"];
const PQ_GROUP: &str = "X25519MLKEM768";

/// Every TLS group OpenSSL has a name for (RFC 8422, 7919, 8446, 8734 and the ML-KEM drafts);
/// those this libssl does not know are skipped.
const ALL_GROUPS: [&str; 46] = [
    "sect163k1",
    "sect163r1",
    "sect163r2",
    "sect193r1",
    "sect193r2",
    "sect233k1",
    "sect233r1",
    "sect239k1",
    "sect283k1",
    "sect283r1",
    "sect409k1",
    "sect409r1",
    "sect571k1",
    "sect571r1",
    "secp160k1",
    "secp160r1",
    "secp160r2",
    "secp192k1",
    "prime192v1",
    "secp224k1",
    "secp224r1",
    "secp256k1",
    "prime256v1",
    "secp384r1",
    "secp521r1",
    "brainpoolP256r1",
    "brainpoolP384r1",
    "brainpoolP512r1",
    "brainpoolP256r1tls13",
    "brainpoolP384r1tls13",
    "brainpoolP512r1tls13",
    "X25519",
    "X448",
    "ffdhe2048",
    "ffdhe3072",
    "ffdhe4096",
    "ffdhe6144",
    "ffdhe8192",
    "X25519MLKEM768",
    "SecP256r1MLKEM768",
    "SecP384r1MLKEM1024",
    "X448MLKEM1024",
    "MLKEM512",
    "MLKEM768",
    "MLKEM1024",
    "curveSM2MLKEM768",
];

/// Groups every libssl this project supports knows and the server must refuse when offered alone
/// at TLS 1.3: proof that the enumeration sees refusals, not only clients that could not offer.
const MUST_BE_REFUSED_AT_TLS13: [&str; 3] = ["X448", "secp521r1", "ffdhe2048"];

/// What one client offers: a protocol version range, and either TLS 1.2 suites, TLS 1.3 suites or
/// key exchange groups narrowed down (the rest left at "everything").
#[derive(Clone, Default)]
struct Offer {
    versions: Option<(SslVersion, SslVersion)>,
    tls12: Option<String>,
    tls13: Option<String>,
    groups: Option<String>,
}

/// How the server took one offer.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    /// Handshake done and the greeting read, with close_notify; the server's `proto` and `cipher`.
    Accepted { proto: String, cipher: String },
    /// The server refused, with the `kind=` of its log line.
    Refused(String),
    /// The client could not put this in a ClientHello, so the server never chose.
    NotOffered,
}

/// A value from a `key=value` log line.
fn field(line: &str, key: &str) -> String {
    line.split(&format!(" {key}="))
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no {key}= in {line}"))
        .to_string()
}

/// A client context that offers everything OpenSSL can, narrowed by `offer`. A bare context, not
/// an SslConnector: that one loads the system trust store each time, which would be most of the
/// test's run time.
fn client(offer: &Offer) -> SslContext {
    let mut b = SslContext::builder(SslMethod::tls_client()).unwrap();
    b.set_verify(SslVerifyMode::NONE);
    let (min, max) = offer
        .versions
        .unwrap_or((SslVersion::TLS1, SslVersion::TLS1_3));
    b.set_min_proto_version(Some(min)).unwrap();
    b.set_max_proto_version(Some(max)).unwrap();
    let tls12 = offer.tls12.as_deref().unwrap_or("ALL:COMPLEMENTOFALL");
    b.set_cipher_list(&format!("{tls12}:@SECLEVEL=0")).unwrap();
    b.set_ciphersuites(offer.tls13.as_deref().unwrap_or(&ALL_TLS13.join(":")))
        .unwrap();
    if let Some(groups) = &offer.groups {
        b.set_groups_list(groups).unwrap();
    }
    if max != SslVersion::TLS1_3 {
        // Without a PSK callback OpenSSL leaves the PSK suites out of the ClientHello. The server
        // must refuse them before this is ever called (it has no PSK), so the key is never used.
        b.set_psk_client_callback(|_, _, _, _| Ok(0));
    }
    b.build()
}

/// Makes one connection with `offer` and reads the server's verdict from its log line.
fn verdict(server: &Server, offer: &Offer) -> Verdict {
    let tcp = TcpStream::connect(server.addr).unwrap();
    tcp.set_read_timeout(Some(PATIENCE)).unwrap();
    let me = format!("conn peer={} ", tcp.local_addr().unwrap());
    let mut ssl = Ssl::new(&client(offer)).unwrap();
    ssl.set_hostname("localhost").unwrap();
    // The stream is dropped before the line is awaited: the server logs a greeted connection only
    // after its linger sees the client's FIN.
    let connected = ssl.connect(tcp).map(|mut s| {
        assert_eq!(support::read_to_close_notify(&mut s), GREETING);
    });
    let line = server.logs.wait_for(&[&me]);
    match connected {
        Ok(()) => {
            assert!(line.contains("result=ok"), "{line}");
            Verdict::Accepted {
                proto: field(&line, "proto"),
                cipher: field(&line, "cipher"),
            }
        }
        Err(e) => {
            assert!(line.contains("result=handshake_failed"), "{line}");
            // A refusal reaches the client as the server's alert; anything else failed in the
            // client before the server could choose (it then saw an EOF or the client's alert).
            if e.to_string().contains("alert") {
                Verdict::Refused(field(&line, "kind"))
            } else {
                Verdict::NotOffered
            }
        }
    }
}

/// Runs every offer against `server` on a few threads (each is a few milliseconds of handshake)
/// and returns the verdicts in the offers' order.
fn verdicts(server: &Server, offers: &[Offer]) -> Vec<Verdict> {
    let next = AtomicUsize::new(0);
    let out = Mutex::new(vec![None; offers.len()]);
    thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(offer) = offers.get(i) else { return };
                    let v = verdict(server, offer);
                    out.lock().unwrap()[i] = Some(v);
                }
            });
        }
    });
    out.into_inner()
        .unwrap()
        .into_iter()
        .map(|v| v.expect("every offer ran"))
        .collect()
}

/// Every TLS 1.2 (and older) suite this libssl knows, from `openssl ciphers` (the same libssl).
fn all_tls12_suites() -> Vec<String> {
    let out = Command::new("openssl")
        .args(["ciphers", "ALL:COMPLEMENTOFALL:@SECLEVEL=0"])
        .output()
        .expect("running openssl ciphers");
    assert!(out.status.success(), "{out:?}");
    let suites: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .split(':')
        .filter(|s| !s.starts_with("TLS_"))
        .map(str::to_string)
        .collect();
    assert!(
        suites.len() > 50,
        "only {} suites: {suites:?}",
        suites.len()
    );
    suites
}

/// Offers each suite alone at TLS 1.2; returns the accepted ones, checking on the way that each
/// refusal is about the cipher and that only SRP suites (which need an SRP login to be offered)
/// could not be put in a ClientHello.
fn accepted_tls12_suites(server: &Server, suites: &[String]) -> BTreeSet<String> {
    let offers: Vec<Offer> = suites
        .iter()
        .map(|s| Offer {
            versions: Some((SslVersion::TLS1_2, SslVersion::TLS1_2)),
            tls12: Some(s.clone()),
            ..Offer::default()
        })
        .collect();
    let mut accepted = BTreeSet::new();
    for (suite, v) in suites.iter().zip(verdicts(server, &offers)) {
        match v {
            Verdict::Accepted { proto, cipher } => {
                assert_eq!((proto.as_str(), &cipher), ("TLSv1.2", suite));
                accepted.insert(cipher);
            }
            Verdict::Refused(kind) => assert_eq!(kind, "no_shared_cipher", "{suite}"),
            Verdict::NotOffered => assert!(suite.contains("SRP"), "{suite} could not be offered"),
        }
    }
    accepted
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

#[test]
fn the_hand_written_lists_are_the_servers_constants() {
    let constant: Vec<&str> = securesock::tls::INTERMEDIATE_TLS12_CIPHERS
        .split(':')
        .collect();
    assert_eq!(constant, INTERMEDIATE_TLS12);
    let constant: Vec<&str> = securesock::tls::TLS13_CIPHERSUITES.split(':').collect();
    assert_eq!(constant, TLS13);
}

/// Every TLS 1.2 suite against an RSA and an ECDSA certificate: each accepts exactly the profile's
/// suites for its key type, and together they accept exactly the profile's list.
#[test]
fn intermediate_accepts_exactly_its_tls12_suites() {
    let suites = all_tls12_suites();
    let rsa = Server::start(&EVERY_LINE);
    let dir = tempfile::tempdir().unwrap();
    let ec = write_cert(dir.path(), "ecdsa", now_unix() - 60, now_unix() + 86_400);
    let ecdsa = Server::start_with(&ec.cert, &ec.key, &EVERY_LINE);
    let by_rsa = accepted_tls12_suites(&rsa, &suites);
    let by_ecdsa = accepted_tls12_suites(&ecdsa, &suites);
    let for_key = |auth: &str| -> BTreeSet<String> {
        INTERMEDIATE_TLS12
            .iter()
            .filter(|s| s.starts_with(&format!("ECDHE-{auth}-")))
            .map(|s| s.to_string())
            .collect()
    };
    assert_eq!(by_rsa, for_key("RSA"), "RSA certificate");
    assert_eq!(by_ecdsa, for_key("ECDSA"), "ECDSA certificate");
    let all: BTreeSet<String> = by_rsa.union(&by_ecdsa).cloned().collect();
    assert_eq!(all, set(&INTERMEDIATE_TLS12));
    eprintln!(
        "{} TLS 1.2 suites offered one at a time to each certificate",
        suites.len()
    );
}

/// TLS 1.0 and 1.1 with every suite, those the profile would accept at TLS 1.2 and the CBC ones
/// old clients use: the refusal is about the version (a protocol_version alert), whatever the
/// suites. For modern, TLS 1.2 as well.
#[test]
fn old_versions_are_refused_for_the_version_whatever_the_suites() {
    let intermediate = Server::start(&EVERY_LINE);
    let modern = Server::start(&["--tls-profile", "modern", "--log-failed-handshakes", "0"]);
    let at = |v: SslVersion| Offer {
        versions: Some((v, v)),
        ..Offer::default()
    };
    let old = [SslVersion::TLS1, SslVersion::TLS1_1];
    for v in verdicts(&intermediate, &old.map(at)) {
        assert_eq!(
            v,
            Verdict::Refused("protocol_version".into()),
            "intermediate"
        );
    }
    let old = [SslVersion::TLS1, SslVersion::TLS1_1, SslVersion::TLS1_2];
    for v in verdicts(&modern, &old.map(at)) {
        assert_eq!(v, Verdict::Refused("protocol_version".into()), "modern");
    }
}

/// Every TLS 1.3 suite this libssl knows, one at a time, to both profiles.
#[test]
fn both_profiles_accept_exactly_the_three_tls13_suites() {
    let known: Vec<&str> = ALL_TLS13
        .into_iter()
        .filter(|s| {
            SslContext::builder(SslMethod::tls_client())
                .unwrap()
                .set_ciphersuites(s)
                .is_ok()
        })
        .collect();
    for profile in ["intermediate", "modern"] {
        let server = Server::start(&["--tls-profile", profile, "--log-failed-handshakes", "0"]);
        let offers: Vec<Offer> = known
            .iter()
            .map(|s| Offer {
                versions: Some((SslVersion::TLS1_3, SslVersion::TLS1_3)),
                tls13: Some(s.to_string()),
                ..Offer::default()
            })
            .collect();
        let mut accepted = BTreeSet::new();
        for (suite, v) in known.iter().zip(verdicts(&server, &offers)) {
            match v {
                Verdict::Accepted { proto, cipher } => {
                    assert_eq!((proto.as_str(), cipher.as_str()), ("TLSv1.3", *suite));
                    accepted.insert(cipher);
                }
                Verdict::Refused(kind) => assert_eq!(kind, "no_shared_cipher", "{suite}"),
                Verdict::NotOffered => panic!("{profile}: {suite} could not be offered"),
            }
        }
        assert_eq!(accepted, set(&TLS13), "{profile}");
    }
}

/// Each group this libssl knows, offered alone, at `version`; returns the accepted ones.
fn accepted_groups(server: &Server, version: SslVersion) -> BTreeSet<String> {
    let known: Vec<&str> = ALL_GROUPS
        .into_iter()
        .filter(|g| {
            SslContext::builder(SslMethod::tls_client())
                .unwrap()
                .set_groups_list(g)
                .is_ok()
        })
        .collect();
    let offers: Vec<Offer> = known
        .iter()
        .map(|g| Offer {
            versions: Some((version, version)),
            // At TLS 1.2 only the profile's suites, so a refusal is about the group.
            tls12: Some(INTERMEDIATE_TLS12.join(":")),
            groups: Some(g.to_string()),
            ..Offer::default()
        })
        .collect();
    let mut accepted = BTreeSet::new();
    let mut refused = BTreeSet::new();
    let mut not_offered = BTreeSet::new();
    for (group, v) in known.iter().zip(verdicts(server, &offers)) {
        let into = match v {
            Verdict::Accepted { .. } => &mut accepted,
            Verdict::Refused(_) => &mut refused,
            Verdict::NotOffered => &mut not_offered,
        };
        into.insert(group.to_string());
    }
    eprintln!(
        "{version:?}: accepted {accepted:?}, refused {refused:?}, not offerable alone {not_offered:?}"
    );
    if version == SslVersion::TLS1_3 {
        for g in MUST_BE_REFUSED_AT_TLS13 {
            assert!(refused.contains(g), "{g} was not refused: {refused:?}");
        }
    }
    accepted
}

/// The profile's groups where this libssl has them all: the hybrid needs OpenSSL 3.5, and is for
/// TLS 1.3 only.
fn profile_groups(version: SslVersion) -> BTreeSet<String> {
    let mut want = set(&GROUPS);
    let pq_known = SslContext::builder(SslMethod::tls_client())
        .unwrap()
        .set_groups_list(PQ_GROUP)
        .is_ok();
    if pq_known && version == SslVersion::TLS1_3 {
        want.insert(PQ_GROUP.to_string());
    }
    want
}

#[test]
fn intermediate_accepts_exactly_its_groups() {
    let server = Server::start_with(&default_certs().cert, &default_certs().key, &EVERY_LINE);
    for version in [SslVersion::TLS1_3, SslVersion::TLS1_2] {
        assert_eq!(
            accepted_groups(&server, version),
            profile_groups(version),
            "{version:?}"
        );
    }
}

#[test]
fn modern_accepts_exactly_its_groups() {
    let server = Server::start(&["--tls-profile", "modern", "--log-failed-handshakes", "0"]);
    assert_eq!(
        accepted_groups(&server, SslVersion::TLS1_3),
        profile_groups(SslVersion::TLS1_3)
    );
}
