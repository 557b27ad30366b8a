//! Trust that holds over time (issue 20): sessions bound to the client-verification settings and
//! re-checked when they resume, client mode checking names against subjectAltNames only, one
//! reading of a subject with two CNs, files read only when regular and bounded, and an OCSP
//! response that stops being stapled once stale. Real processes only: the securesock binary, the
//! real `openssl s_client`, `openssl ca`, `openssl ocsp`, and the PKI of `scripts/gen-ca.sh`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use crate::support::{
    PATIENCE, Server, client_mode, mtls, now_unix, plain_read, refused_start, s_client_full,
    s_client_unchecked,
};

const GREETING: &str = "Hello, secure world!";

/// A fresh 80-byte ticket key in a 0600 file.
fn ticket_key(dir: &Path) -> PathBuf {
    let path = dir.join("tickets.key");
    let key: Vec<u8> = crate::support::pseudo_random(80, now_unix() as u64);
    fs::write(&path, key).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// A current CRL from the gen-ca.sh CA that revokes nothing, written by `openssl ca`.
fn empty_crl(dir: &Path) -> PathBuf {
    fs::write(dir.join("index.txt"), "").unwrap();
    fs::write(dir.join("crlnumber"), "01\n").unwrap();
    let cnf = dir.join("ca.cnf");
    fs::write(
        &cnf,
        format!(
            "[ca]\ndefault_ca = d\n[d]\ndatabase = {}\ncrlnumber = {}\ndefault_md = sha256\ndefault_crl_days = 30\n",
            dir.join("index.txt").display(),
            dir.join("crlnumber").display()
        ),
    )
    .unwrap();
    let out = dir.join("crl.pem");
    let run = Command::new("openssl")
        .args(["ca", "-gencrl", "-config"])
        .arg(&cnf)
        .args([
            "-cert",
            &mtls("ca-cert.pem"),
            "-keyfile",
            &mtls("ca-key.pem"),
        ])
        .arg("-out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(run.status.success(), "{run:?}");
    out
}

/// The gen-ca.sh server with `args`.
fn mtls_server(args: &[&str]) -> Server {
    let (cert, key) = (mtls("server-cert.pem"), mtls("server-key.pem"));
    Server::start_with(Path::new(&cert), Path::new(&key), args)
}

/// s_client presenting `cert`/`key` with `version`, saving (`save`) or offering a session file.
fn session(
    server: &Server,
    version: &str,
    cert: &str,
    key: &str,
    file: &Path,
    save: bool,
) -> String {
    let flag = if save { "-sess_out" } else { "-sess_in" };
    let ca = mtls("ca-cert.pem");
    let out = s_client_full(
        server.addr,
        &[
            version,
            "-CAfile",
            &ca,
            "-cert",
            cert,
            "-key",
            key,
            flag,
            file.to_str().unwrap(),
        ],
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The gen-ca.sh client certificate `name` (`client`, `revoked`) as cert and key paths.
fn client(name: &str) -> (String, String) {
    (
        mtls(&format!("{name}-cert.pem")),
        mtls(&format!("{name}-key.pem")),
    )
}

/// Sends SIGHUP and waits for the reload that follows it (the `n`th of this server).
fn reload(server: &Server, n: usize) {
    server.signal(libc::SIGHUP);
    server.logs.wait_for_n(&["reload ok"], n);
}

const VERSIONS: [&str; 2] = ["-tls1_2", "-tls1_3"];

#[test]
fn a_client_revoked_by_a_new_crl_resumes_on_neither_tls_version() {
    let dir = tempfile::tempdir().unwrap();
    let crl = empty_crl(dir.path());
    let keys = ticket_key(dir.path());
    let ca = mtls("ca-cert.pem");
    let server = mtls_server(&[
        "--client-ca",
        &ca,
        "--require-client-cert",
        "--crl",
        crl.to_str().unwrap(),
        "--ticket-key-file",
        keys.to_str().unwrap(),
    ]);
    let (cert, key) = client("revoked");
    for v in VERSIONS {
        let file = dir.path().join(format!("s{v}.pem"));
        let first = session(&server, v, &cert, &key, &file, true);
        assert!(first.contains(GREETING), "{v}: not listed yet: {first}");
    }
    // A reload that changes nothing keeps every session resuming.
    reload(&server, 1);
    for v in VERSIONS {
        let file = dir.path().join(format!("s{v}.pem"));
        let again = session(&server, v, &cert, &key, &file, false);
        assert!(
            again.contains("Reused,"),
            "{v}: unchanged settings: {again}"
        );
        assert!(again.contains(GREETING), "{v}: {again}");
    }
    // The CA's CRL, which lists this certificate, replaces the empty one.
    fs::copy(mtls("crl.pem"), &crl).unwrap();
    let reloads = server.logs.matching(&["reload ok"]).len();
    reload(&server, reloads + 1);
    for (i, v) in VERSIONS.iter().enumerate() {
        let file = dir.path().join(format!("s{v}.pem"));
        let after = session(&server, v, &cert, &key, &file, false);
        assert!(
            !after.contains("Reused,"),
            "{v}: a revoked session resumed: {after}"
        );
        assert!(!after.contains(GREETING), "{v}: {after}");
        server
            .logs
            .wait_for_n(&["result=handshake_failed", "certificate revoked"], i + 1);
    }
}

/// Sessions made on `a` offered to `b`: whether each TLS version resumed (the client is always
/// admitted: it is the gen-ca.sh `client`, CN=client).
fn resumes_across(a: &Server, b: &Server, dir: &Path, tag: &str) -> Vec<bool> {
    let (cert, key) = client("client");
    VERSIONS
        .iter()
        .map(|v| {
            let file = dir.join(format!("{tag}{v}.pem"));
            let first = session(a, v, &cert, &key, &file, true);
            assert!(first.contains(GREETING), "{tag}{v}: {first}");
            let there = session(b, v, &cert, &key, &file, false);
            assert!(there.contains(GREETING), "{tag}{v}: {there}");
            there.contains("Reused,")
        })
        .collect()
}

#[test]
fn replicas_resume_each_other_only_under_the_same_verification_settings() {
    let dir = tempfile::tempdir().unwrap();
    let keys = ticket_key(dir.path());
    let keys = keys.to_str().unwrap();
    let crl = empty_crl(dir.path());
    let crl = crl.to_str().unwrap();
    let ca = mtls("ca-cert.pem");
    // The same CA set in another order, and one more CA.
    let both = dir.path().join("both.pem");
    fs::write(
        &both,
        [
            fs::read(mtls("other-ca-cert.pem")).unwrap(),
            fs::read(&ca).unwrap(),
        ]
        .concat(),
    )
    .unwrap();
    let reordered = dir.path().join("reordered.pem");
    fs::write(
        &reordered,
        [
            fs::read(&ca).unwrap(),
            fs::read(mtls("other-ca-cert.pem")).unwrap(),
        ]
        .concat(),
    )
    .unwrap();
    let base = [
        "--client-ca",
        ca.as_str(),
        "--require-client-cert",
        "--ticket-key-file",
        keys,
    ];
    let with = |extra: &[&str]| mtls_server(&[&base[..], extra].concat());
    let a = with(&["--crl", crl]);
    let b = with(&["--crl", crl]);
    assert_eq!(resumes_across(&a, &b, dir.path(), "same"), [true, true]);
    // A rule that still admits the client, but is a rule: sessions from before it do not resume.
    let ruled = with(&["--crl", crl, "--allow-cn", "client"]);
    assert_eq!(
        resumes_across(&a, &ruled, dir.path(), "rule"),
        [false, false]
    );
    let no_crl = with(&[]);
    assert_eq!(
        resumes_across(&a, &no_crl, dir.path(), "crl"),
        [false, false]
    );
    let ca_b = mtls_server(&[
        "--client-ca",
        both.to_str().unwrap(),
        "--require-client-cert",
        "--ticket-key-file",
        keys,
    ]);
    assert_eq!(
        resumes_across(&no_crl, &ca_b, dir.path(), "ca"),
        [false, false]
    );
    let ca_c = mtls_server(&[
        "--client-ca",
        reordered.to_str().unwrap(),
        "--require-client-cert",
        "--ticket-key-file",
        keys,
    ]);
    assert_eq!(
        resumes_across(&ca_b, &ca_c, dir.path(), "order"),
        [true, true]
    );
}

/// Writes a certificate signed by the gen-ca.sh CA for `subject` (fields in DER order), valid
/// until `not_after` (Unix seconds), with `dns` as its only SAN when given, for a client
/// (`server` false) or a server, as DIR/FILE-cert.pem and DIR/FILE-key.pem (0600).
fn ca_signed(
    dir: &Path,
    file: &str,
    subject: &[(&str, &str)],
    not_after: i64,
    dns: Option<&str>,
    server: bool,
) -> (String, String) {
    use openssl::asn1::Asn1Time;
    use openssl::bn::{BigNum, MsbOption};
    use openssl::ec::{EcGroup, EcKey};
    use openssl::hash::MessageDigest;
    use openssl::nid::Nid;
    use openssl::pkey::PKey;
    use openssl::x509::extension::{ExtendedKeyUsage, SubjectAlternativeName};
    use openssl::x509::{X509, X509NameBuilder};

    let ca = X509::from_pem(&fs::read(mtls("ca-cert.pem")).unwrap()).unwrap();
    let ca_key = PKey::private_key_from_pem(&fs::read(mtls("ca-key.pem")).unwrap()).unwrap();
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    let key = PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap();
    let mut name = X509NameBuilder::new().unwrap();
    for (field, value) in subject {
        name.append_entry_by_text(field, value).unwrap();
    }
    let name = name.build();
    let mut b = X509::builder().unwrap();
    b.set_version(2).unwrap();
    let mut serial = BigNum::new().unwrap();
    serial.rand(64, MsbOption::MAYBE_ZERO, false).unwrap();
    b.set_serial_number(&serial.to_asn1_integer().unwrap())
        .unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_issuer_name(ca.subject_name()).unwrap();
    b.set_pubkey(&key).unwrap();
    b.set_not_before(&Asn1Time::from_unix(now_unix() - 60).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::from_unix(not_after).unwrap())
        .unwrap();
    let mut eku = ExtendedKeyUsage::new();
    if server {
        eku.server_auth();
    } else {
        eku.client_auth();
    }
    b.append_extension(eku.build().unwrap()).unwrap();
    if let Some(dns) = dns {
        let san = SubjectAlternativeName::new()
            .dns(dns)
            .build(&b.x509v3_context(Some(&ca), None))
            .unwrap();
        b.append_extension(san).unwrap();
    }
    b.sign(&ca_key, MessageDigest::sha256()).unwrap();
    let cert = dir.join(format!("{file}-cert.pem"));
    let key_path = dir.join(format!("{file}-key.pem"));
    fs::write(&cert, b.build().to_pem().unwrap()).unwrap();
    fs::write(&key_path, key.private_key_to_pem_pkcs8().unwrap()).unwrap();
    fs::set_permissions(&key_path, fs::Permissions::from_mode(0o600)).unwrap();
    (
        cert.to_str().unwrap().to_string(),
        key_path.to_str().unwrap().to_string(),
    )
}

#[test]
fn a_session_whose_certificate_expired_since_does_not_resume() {
    // The context does not change (no reload, same settings, same session ID context): only the
    // re-check of the ticket's certificate on resumption can refuse it.
    let dir = tempfile::tempdir().unwrap();
    let expires = now_unix() + 6;
    let (cert, key) = ca_signed(
        dir.path(),
        "brief",
        &[("CN", "brief")],
        expires,
        None,
        false,
    );
    let ca = mtls("ca-cert.pem");
    let server = mtls_server(&["--client-ca", &ca, "--require-client-cert"]);
    for v in VERSIONS {
        let file = dir.path().join(format!("s{v}.pem"));
        let first = session(&server, v, &cert, &key, &file, true);
        assert!(first.contains(GREETING), "{v}: {first}");
    }
    // Waiting on the clock itself, the one thing this test is about.
    while now_unix() <= expires + 1 {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    for (i, v) in VERSIONS.iter().enumerate() {
        let file = dir.path().join(format!("s{v}.pem"));
        let after = session(&server, v, &cert, &key, &file, false);
        assert!(
            !after.contains("Reused,"),
            "{v}: an expired session resumed: {after}"
        );
        assert!(!after.contains(GREETING), "{v}: {after}");
        server.logs.wait_for_n(
            &["result=handshake_failed", "certificate has expired"],
            i + 1,
        );
    }
}

#[test]
fn a_tls12_session_resumed_by_id_whose_certificate_expired_since_is_refused() {
    // No tickets (-no_ticket): the server's own session cache resumes by session ID, where no
    // ticket hook runs; the re-check after the handshake is what refuses it.
    let dir = tempfile::tempdir().unwrap();
    let expires = now_unix() + 6;
    let (cert, key) = ca_signed(
        dir.path(),
        "brief",
        &[("CN", "brief")],
        expires,
        None,
        false,
    );
    let ca = mtls("ca-cert.pem");
    let server = mtls_server(&["--client-ca", &ca, "--require-client-cert"]);
    let file = dir.path().join("by-id.pem");
    let run = |flag: &str, checked: bool| {
        let client = if checked {
            s_client_full
        } else {
            s_client_unchecked
        };
        let out = client(
            server.addr,
            &[
                "-tls1_2",
                "-no_ticket",
                "-CAfile",
                &ca,
                "-cert",
                &cert,
                "-key",
                &key,
                flag,
                file.to_str().unwrap(),
            ],
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let first = run("-sess_out", true);
    assert!(first.contains(GREETING), "{first}");
    let again = run("-sess_in", true);
    assert!(
        again.contains("Reused,") && again.contains(GREETING),
        "{again}"
    );
    // Waiting on the clock itself, the one thing this test is about.
    while now_unix() <= expires + 1 {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // Refused after a resumption has completed: no data, and no close_notify either.
    let after = run("-sess_in", false);
    assert!(
        !after.contains(GREETING),
        "an expired session was served: {after}"
    );
    let line = server
        .logs
        .wait_for(&["result=handshake_failed", "certificate has expired"]);
    assert!(line.contains("kind=client_cert"), "{line}");
}

/// Client mode in front of a greet server serving `cert`/`key`, verifying `upstream.test`.
fn client_mode_to(cert: &str, key: &str) -> (Server, Server) {
    let upstream = Server::start_with(Path::new(cert), Path::new(key), &[]);
    let ca = mtls("ca-cert.pem");
    let client = client_mode(
        &upstream.addr.to_string(),
        &["--upstream-ca", &ca, "--upstream-name", "upstream.test"],
    );
    (upstream, client)
}

#[test]
fn client_mode_checks_the_upstream_name_against_subject_alt_names_only() {
    let dir = tempfile::tempdir().unwrap();
    let day = now_unix() + 86_400;
    let subject = [("CN", "upstream.test")];
    let (cert, key) = ca_signed(dir.path(), "cn-only", &subject, day, None, true);
    let (_upstream, client) = client_mode_to(&cert, &key);
    let got = plain_read(client.addr).expect("an end of stream, not a reset");
    assert!(got.is_empty(), "a CN-only certificate was accepted");
    let line = client.logs.wait_for(&["conn ", "mode=client"]);
    assert!(line.contains("kind=server_cert"), "{line}");
    assert!(line.contains("reason=\"hostname mismatch\""), "{line}");

    let (cert, key) = ca_signed(
        dir.path(),
        "san",
        &subject,
        day,
        Some("upstream.test"),
        true,
    );
    let (_upstream, client) = client_mode_to(&cert, &key);
    assert_eq!(plain_read(client.addr).unwrap(), GREETING.as_bytes());
}

#[test]
fn a_wildcard_upstream_name_is_refused_at_start() {
    let ca = mtls("ca-cert.pem");
    let line = refused_start(&[
        "--listen",
        "127.0.0.1:0",
        "--mode",
        "client",
        "--upstream",
        "127.0.0.1:9",
        "--upstream-ca",
        &ca,
        "--upstream-name",
        "*.example.com",
    ]);
    assert!(line.contains("*.example.com"), "{line}");
    assert!(line.contains("wildcard"), "{line}");
}

/// s_client presenting `cert`/`key` once.
fn connect_as(server: &Server, cert: &str, key: &str) -> Output {
    let ca = mtls("ca-cert.pem");
    s_client_full(server.addr, &["-CAfile", &ca, "-cert", cert, "-key", key])
}

#[test]
fn a_certificate_with_two_cns_never_matches_allow_cn() {
    let dir = tempfile::tempdir().unwrap();
    let day = now_unix() + 86_400;
    let subject = [("OU", "payments"), ("CN", "client"), ("CN", "admin")];
    let (cert, key) = ca_signed(dir.path(), "two-cns", &subject, day, None, false);
    let ca = mtls("ca-cert.pem");
    for (n, cn) in ["client", "admin"].iter().enumerate() {
        let server = mtls_server(&["--client-ca", &ca, "--allow-cn", cn]);
        for (i, v) in VERSIONS.iter().enumerate() {
            let mut args = vec!["-CAfile", ca.as_str(), "-cert", &cert, "-key", &key];
            args.push(v);
            let out = s_client_full(server.addr, &args);
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(!text.contains(GREETING), "{n} {cn} {v}: admitted: {text}");
            let line = server
                .logs
                .wait_for_n(&["result=handshake_failed", "kind=not_allowed"], i + 1)
                .pop()
                .unwrap();
            assert!(line.contains("2 CNs"), "{line}");
            assert!(line.contains("CN=admin,CN=client,OU=payments"), "{line}");
        }
    }
    // Its other fields still count.
    let server = mtls_server(&["--client-ca", &ca, "--allow-ou", "payments"]);
    let out = connect_as(&server, &cert, &key);
    assert!(String::from_utf8_lossy(&out.stdout).contains(GREETING));
}

#[test]
fn only_regular_files_within_their_bound_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let certs = crate::support::default_certs();
    let (cert, key) = (certs.cert.to_str().unwrap(), certs.key.to_str().unwrap());
    let start = |extra: &[&str]| {
        let mut args = vec!["--listen", "127.0.0.1:0", "--cert", cert, "--key", key];
        args.extend_from_slice(extra);
        refused_start(&args)
    };
    // A FIFO with no writer: a blocking open or read would hang start-up (refused_start gives up
    // after 20 s and fails the test).
    let fifo = dir.path().join("keys.fifo");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let line = start(&["--ticket-key-file", fifo.to_str().unwrap()]);
    assert!(line.contains(fifo.to_str().unwrap()), "{line}");
    assert!(line.contains("it is a FIFO, not a regular file"), "{line}");

    let line = refused_start(&[
        "--listen",
        "127.0.0.1:0",
        "--cert",
        "/dev/zero",
        "--key",
        key,
    ]);
    assert!(
        line.ends_with("cannot read certificate /dev/zero: it is a device, not a regular file"),
        "{line}"
    );
    let line = start(&["--client-ca", dir.path().to_str().unwrap()]);
    assert!(
        line.contains("it is a directory, not a regular file"),
        "{line}"
    );

    // A certificate file one byte over its 1 MiB bound (PEM with trailing padding).
    let big = dir.path().join("big-cert.pem");
    let mut bytes = fs::read(cert).unwrap();
    bytes.resize(1024 * 1024 + 1, b'\n');
    fs::write(&big, &bytes).unwrap();
    let line = refused_start(&[
        "--listen",
        "127.0.0.1:0",
        "--cert",
        big.to_str().unwrap(),
        "--key",
        key,
    ]);
    assert!(
        line.contains("more than the 1 MiB a certificate may hold"),
        "{line}"
    );
    // Exactly at the bound it is read.
    bytes.truncate(1024 * 1024);
    fs::write(&big, &bytes).unwrap();
    let server = Server::start_with(&big, &certs.key, &[]);
    assert_eq!(server.greeting(), GREETING.as_bytes());

    // A ticket key file over its bound (13,108 keys).
    let many = dir.path().join("many.key");
    fs::write(&many, crate::support::pseudo_random(80 * 13_108, 7)).unwrap();
    fs::set_permissions(&many, fs::Permissions::from_mode(0o600)).unwrap();
    let line = start(&["--ticket-key-file", many.to_str().unwrap()]);
    assert!(
        line.contains("more than the 1 MiB a ticket key file may hold"),
        "{line}"
    );
}

/// Runs `openssl ARGS`, under libfaketime moved by `offset` when given.
fn openssl(args: &[&str], offset: Option<&str>) {
    let mut cmd = match offset {
        Some(offset) => {
            let mut c = Command::new("faketime");
            c.args(["-f", offset, "openssl"]);
            c
        }
        None => Command::new("openssl"),
    };
    let out = cmd.args(args).output().unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A DER response from the test CA saying the server certificate is good, made `ago` seconds in
/// the past and valid for one minute from then.
fn ocsp_response(dir: &Path, ago: i64) -> PathBuf {
    let serial = crate::support::serial_of(Path::new(&mtls("server-cert.pem")));
    let index = dir.join("ocsp-index.txt");
    fs::write(
        &index,
        format!("V\t301231000000Z\t\t{serial}\tunknown\t/CN=localhost\n"),
    )
    .unwrap();
    let request = dir.join("request.der");
    let (ca, cert) = (mtls("ca-cert.pem"), mtls("server-cert.pem"));
    openssl(
        &[
            "ocsp",
            "-issuer",
            &ca,
            "-cert",
            &cert,
            "-no_nonce",
            "-reqout",
            request.to_str().unwrap(),
        ],
        None,
    );
    let out = dir.join("response.der");
    let offset = format!("-{ago}");
    openssl(
        &[
            "ocsp",
            "-index",
            index.to_str().unwrap(),
            "-CA",
            &ca,
            "-rsigner",
            &ca,
            "-rkey",
            &mtls("ca-key.pem"),
            "-reqin",
            request.to_str().unwrap(),
            "-respout",
            out.to_str().unwrap(),
            "-nmin",
            "1",
        ],
        Some(&offset),
    );
    out
}

#[test]
fn a_response_past_its_next_update_stops_being_stapled_and_a_reload_refuses_it() {
    let dir = tempfile::tempdir().unwrap();
    // nextUpdate is a minute after thisUpdate; with the five minutes' leeway the response is
    // current for 360 s from thisUpdate: made 352 s ago, it has about 8 s left.
    let made = now_unix();
    let resp = ocsp_response(dir.path(), 352);
    let stale_at = made - 352 + 360;
    let chain = dir.path().join("chain.pem");
    fs::write(
        &chain,
        [
            fs::read(mtls("server-cert.pem")).unwrap(),
            fs::read(mtls("ca-cert.pem")).unwrap(),
        ]
        .concat(),
    )
    .unwrap();
    let server = Server::start_with(
        &chain,
        Path::new(&mtls("server-key.pem")),
        &[
            "--ocsp-response",
            resp.to_str().unwrap(),
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    );
    let metrics_at = crate::support::metrics_addr(&server);
    let gauges = || {
        let (_, body) = crate::support::http_get(metrics_at, "/metrics");
        let samples = crate::support::parse_metrics(&body);
        let get = |name: &str| crate::support::metric(&samples, name);
        (
            get("securesock_ocsp_response_stapled{service=\"default\"}"),
            get("securesock_ocsp_response_age_seconds{service=\"default\"}"),
            get("securesock_ocsp_response_next_update_timestamp_seconds{service=\"default\"}"),
        )
    };
    let (on, age, next) = gauges();
    assert_eq!(on, 1.0, "stapled while current");
    assert!(
        age >= 352.0 && age < 352.0 + PATIENCE.as_secs_f64(),
        "age {age}"
    );
    // nextUpdate is thisUpdate + 60 s; thisUpdate is within a few seconds of made - 352.
    let expected = (made - 352 + 60) as f64;
    assert!(
        (next - expected).abs() <= 5.0,
        "nextUpdate {next}, about {expected}"
    );
    let soon = server.logs.wait_for(&["WARN", "expires within a day"]);
    assert!(soon.contains(resp.to_str().unwrap()), "{soon}");
    let ca = mtls("ca-cert.pem");
    let stapled = || {
        let out = s_client_full(server.addr, &["-CAfile", &ca, "-status"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(text.contains(GREETING), "{text}");
        text.contains("OCSP Response Status: successful")
    };
    let deadline = Instant::now() + PATIENCE + std::time::Duration::from_secs(10);
    while stapled() {
        assert!(
            Instant::now() < deadline,
            "a stale response is still stapled"
        );
    }
    assert!(now_unix() >= stale_at, "dropped before it was stale");
    let gone = server.logs.wait_for(&["WARN", "no longer stapled"]);
    assert!(gone.contains(resp.to_str().unwrap()), "{gone}");
    assert_eq!(server.logs.matching(&["expires within a day"]).len(), 1);
    assert!(!stapled());
    assert_eq!(gauges().0, 0.0, "the metric says it is no longer stapled");
    assert_eq!(
        server.logs.matching(&["no longer stapled"]).len(),
        1,
        "warned once"
    );
    // A reload with the same stale file is refused, as start-up refuses it.
    server.signal(libc::SIGHUP);
    let failed = server.logs.wait_for(&["reload failed"]);
    assert!(failed.contains("is out of date"), "{failed}");
    assert!(!stapled());
}

#[test]
fn a_certificate_swapped_for_a_fifo_fails_its_reload_and_the_watcher_goes_on() {
    // The file watcher reads every watched file to notice a change; a blocking read of a FIFO
    // with no writer would stop it for good, and with it every later reload.
    let dir = tempfile::tempdir().unwrap();
    let now = now_unix();
    let first = crate::support::write_cert(dir.path(), "first", now - 60, now + 86_400);
    let server = Server::start_with(&first.cert, &first.key, &["--watch-interval", "0.2"]);
    let saved = dir.path().join("saved.pem");
    fs::rename(&first.cert, &saved).unwrap();
    assert!(
        Command::new("mkfifo")
            .arg(&first.cert)
            .status()
            .unwrap()
            .success()
    );
    let line = server.logs.wait_for(&["reload failed"]);
    assert!(line.contains("not a regular file"), "{line}");
    fs::remove_file(&first.cert).unwrap();
    fs::rename(&saved, &first.cert).unwrap();
    server.logs.wait_for(&["reload ok"]);
}
