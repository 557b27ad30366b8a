//! Issue 19, performance: services with the same TLS settings and the same files share one
//! context (built once), and services that differ in any TLS setting, access rules included,
//! never share one: a session made on one never resumes on the other, and each keeps its rules.
//!
//! In this process: the services are bound through the library, each from its own flags; what is
//! observed is what the real `openssl s_client` sees (resumption, refusal). The cache itself is
//! driven through `securesock::tls::Cache` for the case no client can see: a file that changes
//! between two services is parsed again.

use std::net::SocketAddr;
use std::path::Path;

use securesock::config::{Service, TlsSettings, parse_args};
use securesock::tls::Cache;

use crate::support::{Services, mtls, s_client_unchecked, write_cert};

const GREETING: &str = "Hello, secure world!";

/// A greet service named `name` with the gen-ca.sh server certificate and its CA for client
/// certificates, plus `flags`.
fn service(name: &str, flags: &[&str]) -> Service {
    let mut argv: Vec<String> = [
        "securesock",
        "--listen",
        "127.0.0.1:0",
        "--cert",
        &mtls("server-cert.pem"),
        "--key",
        &mtls("server-key.pem"),
        "--client-ca",
        &mtls("ca-cert.pem"),
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    argv.extend(flags.iter().map(ToString::to_string));
    let mut config = parse_args(argv).unwrap_or_else(|e| panic!("bad flags {flags:?}: {e:?}"));
    let mut service = config.services.remove(0);
    service.name = name.to_string();
    service
}

/// `services` with the process's settings as flags leave them, whatever fields they grow.
fn start(services: Vec<Service>) -> Services {
    let mut config = parse_args(["securesock"]).expect("no flags");
    config.services = services;
    Services::start(&config)
}

/// What one TLS 1.3 connection with the `client` certificate got: greeted, and resumed the
/// session in `session` (`save`: a full handshake that stores its session there).
fn connect(addr: SocketAddr, session: &Path, save: bool) -> (bool, bool) {
    let flag = if save { "-sess_out" } else { "-sess_in" };
    let out = s_client_unchecked(
        addr,
        &[
            "-tls1_3",
            "-CAfile",
            &mtls("ca-cert.pem"),
            "-cert",
            &mtls("client-cert.pem"),
            "-key",
            &mtls("client-key.pem"),
            flag,
            session.to_str().unwrap(),
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    (text.contains(GREETING), text.contains("Reused, TLSv1.3"))
}

#[test]
fn services_with_the_same_settings_share_sessions_and_others_keep_their_own_rules() {
    let running = start(vec![
        service("a", &[]),
        service("twin", &[]),
        // Accepts the same client, under a rule: other settings, so another context.
        service("ruled", &["--allow-cn", "client"]),
        // Refuses that client: its rule must be in force, not the first service's context.
        service("closed", &["--allow-cn", "nobody"]),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let session = dir.path().join("session.pem");
    assert_eq!(connect(running.addr("a"), &session, true), (true, false));
    assert_eq!(
        connect(running.addr("twin"), &session, false),
        (true, true),
        "a session from a did not resume on its twin: the two do not share one context"
    );
    assert_eq!(
        connect(running.addr("ruled"), &session, false),
        (true, false),
        "a session made without the rule resumed on the service with one"
    );
    assert_eq!(
        connect(running.addr("closed"), &session, false),
        (false, false),
        "the service whose rule refuses the client let it in"
    );
    // And the session still resumes where it was made.
    assert_eq!(connect(running.addr("a"), &session, false), (true, true));
}

fn settings(cert: &Path, key: &Path) -> TlsSettings {
    let mut config = parse_args([
        "securesock",
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ])
    .expect("flags");
    config.services.remove(0).tls
}

#[test]
fn a_context_is_built_once_for_the_same_files_and_again_when_a_file_changes() {
    let dir = tempfile::tempdir().unwrap();
    let now = crate::support::now_unix();
    let first = write_cert(dir.path(), "first", now - 60, now + 86_400);
    let second = write_cert(dir.path(), "second", now - 60, now + 86_400);
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let install = |pair: &crate::support::CertPair| {
        std::fs::copy(&pair.cert, &cert).unwrap();
        std::fs::copy(&pair.key, &key).unwrap();
    };
    install(&first);
    let tls_settings = settings(&cert, &key);
    let mut cache = Cache::new();
    let a = cache.build(&tls_settings).unwrap();
    let b = cache.build(&tls_settings).unwrap();
    let ctx = |t: &securesock::tls::Tls| std::ptr::from_ref(t.acceptor().unwrap().context());
    assert_eq!(ctx(&a), ctx(&b), "the same settings and files built twice");
    assert_eq!(cache.contexts(), 1);

    install(&second);
    let c = cache.build(&tls_settings).unwrap();
    assert_ne!(
        ctx(&a),
        ctx(&c),
        "a changed certificate reused the old context"
    );
    let serial = |t: &securesock::tls::Tls| t.info.as_ref().unwrap().serial.clone();
    assert_ne!(serial(&a), serial(&c));
    assert_eq!(
        serial(&c),
        crate::support::serial_of(&second.cert),
        "the new file's certificate is served"
    );
    assert_eq!(cache.contexts(), 1, "the changed file replaced its entry");
}
