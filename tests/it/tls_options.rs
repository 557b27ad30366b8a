//! Mutual TLS, SNI and ALPN, checked with the real `openssl s_client`.

// The tests that read the `conn` line or send SIGHUP stay on the binary; the others run in this
// process.

use std::net::SocketAddr;
use std::path::Path;

use crate::support;
use crate::support::{
    InProcess, Server, brief_field, mtls, s_client, s_client_full, write_cert_for,
};

const GREETING: &[u8] = b"Hello, secure world!";

/// A server with the gen-ca.sh server certificate and `args`.
fn mtls_server(args: &[&str]) -> Server {
    let (cert, key) = (mtls("server-cert.pem"), mtls("server-key.pem"));
    Server::start_with(Path::new(&cert), Path::new(&key), args)
}

/// [`mtls_server`] in this process, for the tests that read nothing from the log.
fn mtls_in_process(args: &[&str]) -> InProcess {
    let (cert, key) = (mtls("server-cert.pem"), mtls("server-key.pem"));
    InProcess::start_with(Path::new(&cert), Path::new(&key), args)
}

/// s_client presenting the client certificate `name` (`client`, `revoked`, `other-client`), or
/// none.
fn with_client_cert(server: &Server, name: Option<&str>) -> std::process::Output {
    let ca = mtls("ca-cert.pem");
    let mut args = vec![
        "-CAfile".to_string(),
        ca,
        "-verify_return_error".to_string(),
    ];
    if let Some(name) = name {
        args.extend(["-cert".into(), mtls(&format!("{name}-cert.pem"))]);
        args.extend(["-key".into(), mtls(&format!("{name}-key.pem"))]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    s_client(server.addr, &args)
}

fn refused_with(server: &Server, out: &std::process::Output, kind: &str, n: usize) {
    assert!(
        out.stdout.is_empty(),
        "got data: {:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    let line = server
        .logs
        .wait_for_n(&["result=handshake_failed"], n)
        .pop()
        .unwrap();
    assert!(line.contains(&format!("kind={kind}")), "{line}");
}

#[test]
fn required_client_certificates() {
    let ca = mtls("ca-cert.pem");
    let server = mtls_server(&["--client-ca", &ca, "--require-client-cert"]);
    let good = with_client_cert(&server, Some("client"));
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );
    assert_eq!(good.stdout, GREETING);
    let line = server.logs.wait_for(&["result=ok"]);
    assert!(line.contains("client=\"CN=client\""), "{line}");

    refused_with(&server, &with_client_cert(&server, None), "client_cert", 1);
    refused_with(
        &server,
        &with_client_cert(&server, Some("other-client")),
        "client_cert",
        2,
    );
}

#[test]
fn optional_client_certificates_are_verified_when_presented() {
    let ca = mtls("ca-cert.pem");
    let server = mtls_server(&["--client-ca", &ca]);
    let anonymous = with_client_cert(&server, None);
    assert_eq!(anonymous.stdout, GREETING);
    let line = server.logs.wait_for(&["result=ok"]);
    assert!(line.contains("client=-"), "{line}");
    refused_with(
        &server,
        &with_client_cert(&server, Some("other-client")),
        "client_cert",
        1,
    );
}

#[test]
fn revoked_client_certificates_are_refused() {
    let (ca, crl) = (mtls("ca-cert.pem"), mtls("crl.pem"));
    let server = mtls_server(&["--client-ca", &ca, "--require-client-cert", "--crl", &crl]);
    assert_eq!(with_client_cert(&server, Some("client")).stdout, GREETING);
    refused_with(
        &server,
        &with_client_cert(&server, Some("revoked")),
        "client_cert",
        1,
    );
    let line = server
        .logs
        .matching(&["result=handshake_failed"])
        .pop()
        .unwrap();
    assert!(line.contains("reason=\"certificate revoked\""), "{line}");
}

#[test]
fn verify_errors_are_named_in_the_log() {
    let ca = mtls("ca-cert.pem");
    let server = mtls_server(&["--client-ca", &ca, "--require-client-cert"]);
    refused_with(
        &server,
        &with_client_cert(&server, Some("other-client")),
        "client_cert",
        1,
    );
    let line = server.logs.wait_for(&["result=handshake_failed"]);
    assert!(
        line.contains("reason=\"unable to get local issuer certificate\""),
        "{line}"
    );
    refused_with(&server, &with_client_cert(&server, None), "client_cert", 2);
    let line = server
        .logs
        .wait_for_n(&["result=handshake_failed"], 2)
        .pop()
        .unwrap();
    assert!(line.contains("peer did not return a certificate"), "{line}");
}

/// A CRL from the gen-ca.sh CA whose nextUpdate has passed.
fn stale_crl(dir: &Path) -> String {
    let validity = [
        "-crl_lastupdate",
        "20200101000000Z",
        "-crl_nextupdate",
        "20200102000000Z",
    ];
    let out = support::empty_crl_of_test_ca(dir, "stale-crl.pem", &validity);
    out.to_str().unwrap().to_string()
}

#[test]
fn a_stale_crl_is_a_warning_at_start_and_the_refusals_say_why() {
    let dir = tempfile::tempdir().unwrap();
    let crl = stale_crl(dir.path());
    let ca = mtls("ca-cert.pem");
    let server = mtls_server(&["--client-ca", &ca, "--require-client-cert", "--crl", &crl]);
    let warning = server.logs.wait_for(&["WARN", "CRL", "expired on"]);
    assert!(warning.contains(&crl), "{warning}");
    refused_with(
        &server,
        &with_client_cert(&server, Some("client")),
        "client_cert",
        1,
    );
    let line = server.logs.wait_for(&["result=handshake_failed"]);
    assert!(line.contains("reason=\"CRL has expired\""), "{line}");
}

/// Writes `expired-client-cert.pem` and its key into `dir`: a client certificate like gen-ca.sh's
/// `client` (same CA, same extensions) whose validity ended yesterday. Made here with the openssl
/// crate, so the CA's own files stay exactly what gen-ca.sh writes.
fn expired_client_cert(dir: &Path) -> (String, String) {
    use openssl::asn1::Asn1Time;
    use openssl::bn::BigNum;
    use openssl::ec::{EcGroup, EcKey};
    use openssl::hash::MessageDigest;
    use openssl::nid::Nid;
    use openssl::pkey::PKey;
    use openssl::x509::extension::{
        AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectKeyIdentifier,
    };
    use openssl::x509::{X509, X509NameBuilder};

    let ca = X509::from_pem(&std::fs::read(mtls("ca-cert.pem")).unwrap()).unwrap();
    let ca_key = PKey::private_key_from_pem(&std::fs::read(mtls("ca-key.pem")).unwrap()).unwrap();
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    let key = PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap();
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", "expired-client").unwrap();
    let name = name.build();
    let now = support::now_unix();
    let mut b = X509::builder().unwrap();
    b.set_version(2).unwrap();
    let serial = BigNum::from_u32(0x5eed_0001)
        .unwrap()
        .to_asn1_integer()
        .unwrap();
    b.set_serial_number(&serial).unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_issuer_name(ca.subject_name()).unwrap();
    b.set_pubkey(&key).unwrap();
    b.set_not_before(&Asn1Time::from_unix(now - 30 * 86_400).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::from_unix(now - 86_400).unwrap())
        .unwrap();
    b.append_extension(BasicConstraints::new().critical().build().unwrap())
        .unwrap();
    b.append_extension(
        KeyUsage::new()
            .critical()
            .digital_signature()
            .build()
            .unwrap(),
    )
    .unwrap();
    b.append_extension(ExtendedKeyUsage::new().client_auth().build().unwrap())
        .unwrap();
    let ski = SubjectKeyIdentifier::new()
        .build(&b.x509v3_context(Some(&ca), None))
        .unwrap();
    b.append_extension(ski).unwrap();
    let aki = AuthorityKeyIdentifier::new()
        .keyid(true)
        .build(&b.x509v3_context(Some(&ca), None))
        .unwrap();
    b.append_extension(aki).unwrap();
    b.sign(&ca_key, MessageDigest::sha256()).unwrap();
    let (cert, key_file) = (
        dir.join("expired-client-cert.pem"),
        dir.join("expired-client-key.pem"),
    );
    std::fs::write(&cert, b.build().to_pem().unwrap()).unwrap();
    std::fs::write(&key_file, key.private_key_to_pem_pkcs8().unwrap()).unwrap();
    (
        cert.to_str().unwrap().to_string(),
        key_file.to_str().unwrap().to_string(),
    )
}

#[test]
fn expired_client_certificates_are_refused_and_the_log_says_why() {
    let ca = mtls("ca-cert.pem");
    let server = mtls_server(&["--client-ca", &ca, "--require-client-cert"]);
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = expired_client_cert(dir.path());
    let out = s_client(
        server.addr,
        &[
            "-CAfile",
            &ca,
            "-verify_return_error",
            "-cert",
            &cert,
            "-key",
            &key,
        ],
    );
    assert!(
        !out.status.success(),
        "an expired client certificate was accepted"
    );
    // The client learns why from the alert.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("certificate expired"), "{stderr}");
    refused_with(&server, &out, "client_cert", 1);
    let line = server
        .logs
        .matching(&["result=handshake_failed"])
        .pop()
        .unwrap();
    // The X509 verification error, not OpenSSL's generic "certificate verify failed".
    assert!(
        line.contains("reason=\"certificate has expired\""),
        "{line}"
    );
    // The same server still takes a valid certificate from the same CA.
    assert_eq!(with_client_cert(&server, Some("client")).stdout, GREETING);
}

#[test]
fn sessions_resume_with_client_certificates() {
    let ca = mtls("ca-cert.pem");
    let server = mtls_in_process(&["--client-ca", &ca, "--require-client-cert"]);
    let dir = tempfile::tempdir().unwrap();
    let session = dir.path().join("session.pem");
    let session = session.to_str().unwrap();
    let (cert, key) = (mtls("client-cert.pem"), mtls("client-key.pem"));
    let common = ["-CAfile", &ca, "-cert", &cert, "-key", &key];
    let first = s_client_full(
        server.addr,
        &[&common[..], &["-sess_out", session]].concat(),
    );
    assert!(first.status.success());
    let again = s_client_full(server.addr, &[&common[..], &["-sess_in", session]].concat());
    let text = String::from_utf8_lossy(&again.stdout);
    assert!(text.contains("Reused, TLSv1.3"), "{text}");
    assert!(text.contains("Hello, secure world!"));
}

/// Writes a client certificate for `subject` (fields in DER order, most significant first),
/// signed by the gen-ca.sh CA, as DIR/FILE-cert.pem and DIR/FILE-key.pem.
fn client_cert_signed_by_the_test_ca(
    dir: &Path,
    file: &str,
    subject: &[(&str, &str)],
) -> (String, String) {
    use openssl::asn1::Asn1Time;
    use openssl::bn::BigNum;
    use openssl::ec::{EcGroup, EcKey};
    use openssl::hash::MessageDigest;
    use openssl::nid::Nid;
    use openssl::pkey::PKey;
    use openssl::x509::extension::ExtendedKeyUsage;
    use openssl::x509::{X509, X509NameBuilder};

    let ca = X509::from_pem(&std::fs::read(mtls("ca-cert.pem")).unwrap()).unwrap();
    let ca_key = PKey::private_key_from_pem(&std::fs::read(mtls("ca-key.pem")).unwrap()).unwrap();
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
    serial
        .rand(64, openssl::bn::MsbOption::MAYBE_ZERO, false)
        .unwrap();
    b.set_serial_number(&serial.to_asn1_integer().unwrap())
        .unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_issuer_name(ca.subject_name()).unwrap();
    b.set_pubkey(&key).unwrap();
    b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::days_from_now(1).unwrap())
        .unwrap();
    b.append_extension(ExtendedKeyUsage::new().client_auth().build().unwrap())
        .unwrap();
    b.sign(&ca_key, MessageDigest::sha256()).unwrap();
    let cert = dir.join(format!("{file}-cert.pem"));
    let key_path = dir.join(format!("{file}-key.pem"));
    std::fs::write(&cert, b.build().to_pem().unwrap()).unwrap();
    std::fs::write(&key_path, key.private_key_to_pem_pkcs8().unwrap()).unwrap();
    (
        cert.to_str().unwrap().to_string(),
        key_path.to_str().unwrap().to_string(),
    )
}

#[test]
fn client_subjects_that_look_alike_log_differently() {
    let ca = mtls("ca-cert.pem");
    let server = mtls_server(&["--client-ca", &ca, "--require-client-cert"]);
    let dir = tempfile::tempdir().unwrap();
    // One CN holding a comma, and a CN with an O after it (in DER order): the same text once
    // naively joined in DER order.
    let one_field =
        client_cert_signed_by_the_test_ca(dir.path(), "one-field", &[("CN", "client, O=Admins")]);
    let two_fields = client_cert_signed_by_the_test_ca(
        dir.path(),
        "two-fields",
        &[("CN", "client"), ("O", "Admins")],
    );
    for (n, (cert, key)) in [one_field, two_fields].iter().enumerate() {
        let out = s_client(server.addr, &["-CAfile", &ca, "-cert", cert, "-key", key]);
        assert_eq!(
            out.stdout,
            GREETING,
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        server.logs.wait_for_n(&["result=ok"], n + 1);
    }
    let clients: Vec<String> = server
        .logs
        .matching(&["result=ok"])
        .iter()
        .map(|l| {
            l.split(" client=")
                .nth(1)
                .and_then(|rest| rest.split(" server=").next())
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert_ne!(clients[0], clients[1]);
    // RFC 4514: the last field in DER order first, the comma inside a value escaped; the log
    // line's own quoting then escapes that backslash.
    assert_eq!(
        clients,
        [r#""CN=client\\, O=Admins""#, r#""O=Admins,CN=client""#]
    );
}

/// The certificates the server sent, as `s_client -showcerts` prints them, and its verdict.
fn served_chain(addr: SocketAddr, ca: &str) -> (usize, bool) {
    let out = s_client_full(addr, &["-CAfile", ca, "-showcerts"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let sent = text.matches("-----BEGIN CERTIFICATE-----").count();
    (sent, text.contains("Verify return code: 0 (ok)"))
}

#[test]
fn the_chain_sent_is_the_certificate_files_own() {
    let ca = mtls("ca-cert.pem");
    // The server's file holds only its leaf. The CA is in the context's trust store (as the client
    // CA), and still is not sent: OpenSSL would otherwise build a chain from that store on every
    // handshake.
    let server = mtls_in_process(&["--client-ca", &ca]);
    assert_eq!(served_chain(server.addr, &ca), (1, true));
    drop(server);

    // A file with the leaf and then its issuer sends both.
    let dir = tempfile::tempdir().unwrap();
    let both = dir.path().join("chain.pem");
    let leaf = std::fs::read(mtls("server-cert.pem")).unwrap();
    let issuer = std::fs::read(&ca).unwrap();
    std::fs::write(&both, [leaf, issuer].concat()).unwrap();
    let server = InProcess::start_with(&both, Path::new(&mtls("server-key.pem")), &[]);
    assert_eq!(served_chain(server.addr, &ca), (2, true));
}

/// The `--sni NAME=CERT,KEY` value for a certificate pair.
fn sni_spec(name: &str, pair: &support::CertPair) -> String {
    format!("{name}={},{}", pair.cert.display(), pair.key.display())
}

fn peer_cn(out: &std::process::Output) -> String {
    brief_field(out, "Peer certificate").unwrap_or_default()
}

#[test]
fn sni_picks_the_certificate_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let api = write_cert_for(dir.path(), "api.example.test");
    let wild = write_cert_for(dir.path(), "*.example.org");
    let (a, w) = (
        sni_spec("api.example.test", &api),
        sni_spec("*.example.org", &wild),
    );
    let server = Server::start(&["--sni", &a, "--sni", &w]);
    for (name, want) in [
        ("api.example.test", "CN = api.example.test"),
        ("API.Example.Test", "CN = api.example.test"),
        ("www.example.org", "CN = *.example.org"),
        ("a.b.example.org", "CN = localhost"),
        ("unknown.test", "CN = localhost"),
    ] {
        let out = s_client(server.addr, &["-servername", name]);
        assert_eq!(out.stdout, GREETING, "{name}");
        assert_eq!(peer_cn(&out), want, "{name}");
    }
    let line = server.logs.wait_for(&["sni=www.example.org"]);
    assert!(line.contains("result=ok"), "{line}");
}

#[test]
fn strict_sni_refuses_unknown_names() {
    let dir = tempfile::tempdir().unwrap();
    let api = write_cert_for(dir.path(), "api.example.test");
    let a = sni_spec("api.example.test", &api);
    let server = Server::start(&["--sni", &a, "--strict-sni"]);
    let refused = s_client(server.addr, &["-servername", "unknown.test"]);
    assert!(refused.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("unrecognized name"), "{stderr}");
    let line = server
        .logs
        .wait_for(&["result=handshake_failed", "sni=unknown.test"]);
    assert!(line.contains("kind=unknown_name"), "{line}");
    // Names the certificates are for, and clients that send no name, are served.
    assert_eq!(
        peer_cn(&s_client(server.addr, &["-servername", "api.example.test"])),
        "CN = api.example.test"
    );
    assert_eq!(
        s_client(server.addr, &["-servername", "localhost"]).stdout,
        GREETING
    );
    assert_eq!(s_client(server.addr, &["-noservername"]).stdout, GREETING);
}

#[test]
fn alpn_selects_in_the_servers_order_refuses_or_goes_on_when_optional() {
    let server = Server::start(&["--alpn", "h2,http/1.1"]);
    let out = s_client_full(server.addr, &["-alpn", "http/1.1,h2"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("ALPN protocol: h2"), "{text}");
    let out = s_client_full(server.addr, &["-alpn", "http/1.1"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("ALPN protocol: http/1.1"));
    let line = server.logs.wait_for(&["alpn=http/1.1"]);
    assert!(line.contains("result=ok"), "{line}");

    let refused = s_client(server.addr, &["-alpn", "spdy/3"]);
    assert!(refused.stdout.is_empty());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("no application protocol"));
    server
        .logs
        .wait_for(&["result=handshake_failed", "kind=alpn"]);

    let optional = Server::start(&["--alpn", "h2", "--alpn-optional"]);
    let out = s_client_full(optional.addr, &["-alpn", "spdy/3"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("No ALPN negotiated"), "{text}");
    assert!(text.contains("Hello, secure world!"));
}

#[test]
fn sni_certificates_reload_with_the_default_one() {
    let dir = tempfile::tempdir().unwrap();
    let api = write_cert_for(dir.path(), "api.example.test");
    let a = sni_spec("api.example.test", &api);
    let server = Server::start(&["--sni", &a, "--watch-interval", "0"]);
    let before = support::served_serial_for(server.addr, "api.example.test").unwrap();
    assert_eq!(before, support::serial_of(&api.cert));
    let renewed = tempfile::tempdir().unwrap();
    let new = write_cert_for(renewed.path(), "api.example.test");
    std::fs::copy(&new.cert, &api.cert).unwrap();
    std::fs::copy(&new.key, &api.key).unwrap();
    server.signal(libc::SIGHUP);
    server.logs.wait_for(&["reload ok"]);
    let after = support::served_serial_for(server.addr, "api.example.test").unwrap();
    assert_eq!(after, support::serial_of(&new.cert));
    assert_ne!(after, before);
}

#[test]
fn the_log_names_the_key_exchange_group_agreed() {
    let server = Server::start(&[]);
    for (offered, logged) in [
        ("X25519", "x25519"),
        ("P-256", "secp256r1"),
        ("P-384", "secp384r1"),
    ] {
        let out = support::s_client(server.addr, &["-groups", offered]);
        assert!(out.status.success(), "{offered}: {out:?}");
        let line = server
            .logs
            .wait_for(&["conn peer=", &format!("group={logged} ")]);
        assert!(line.contains("result=ok"), "{line}");
    }
}

#[test]
fn strict_sni_refuses_a_name_that_is_not_a_host_name_and_logs_it_escaped() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let api = write_cert_for(dir.path(), "api.example.test");
    let a = sni_spec("api.example.test", &api);
    let server = Server::start(&["--sni", &a, "--strict-sni"]);
    let name = std::ffi::OsStr::from_bytes(b"\xffx.example");
    let out = std::process::Command::new("timeout")
        .args([
            "20", "openssl", "s_client", "-brief", "-ign_eof", "-connect",
        ])
        .arg(server.addr.to_string())
        .arg("-servername")
        .arg(name)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(out.stdout.is_empty(), "served: {out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unrecognized name"), "{stderr}");
    let line = server
        .logs
        .wait_for(&["result=handshake_failed", "kind=unknown_name"]);
    assert!(line.contains(r"sni=\xffx.example"), "{line}");
}

/// Saves a session from a connection asking for `name`, or offers a saved one; whether it was
/// resumed.
fn resumes(server: &Server, version: &str, name: &str, session: &Path, save: bool) -> bool {
    let flag = if save { "-sess_out" } else { "-sess_in" };
    let out = s_client_full(
        server.addr,
        &[
            version,
            "-servername",
            name,
            flag,
            session.to_str().unwrap(),
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Hello, secure world!"), "{name}: {text}");
    text.contains("Reused,")
}

#[test]
fn a_session_resumes_only_under_the_name_it_was_made_for() {
    let dir = tempfile::tempdir().unwrap();
    let api = write_cert_for(dir.path(), "api.example.test");
    let a = sni_spec("api.example.test", &api);
    let server = Server::start(&["--sni", &a]);
    for version in ["-tls1_2", "-tls1_3"] {
        let session = dir.path().join(format!("session{version}.pem"));
        assert!(!resumes(
            &server,
            version,
            "api.example.test",
            &session,
            true
        ));
        assert!(
            resumes(&server, version, "api.example.test", &session, false),
            "{version}: the same name resumes"
        );
        assert!(
            !resumes(&server, version, "localhost", &session, false),
            "{version}: a session for api.example.test resumed under localhost"
        );
        // The other way round, within the default certificate's names.
        let session = dir.path().join(format!("local{version}.pem"));
        assert!(!resumes(&server, version, "localhost", &session, true));
        assert!(!resumes(
            &server,
            version,
            "api.example.test",
            &session,
            false
        ));
    }
    // Every line carries the name sent on its own connection. A line is written once the server
    // is done with its connection, which may be after s_client has exited: wait for all six.
    server
        .logs
        .wait_for_n(&["conn peer=", "sni=api.example.test"], 6);
    let api_lines = server
        .logs
        .matching(&["conn peer=", "sni=api.example.test"]);
    assert_eq!(api_lines.len(), 6, "{:#?}", server.logs.lines());
}

#[test]
fn strict_sni_holds_when_a_tls12_session_is_offered_under_an_unknown_name() {
    let dir = tempfile::tempdir().unwrap();
    let api = write_cert_for(dir.path(), "api.example.test");
    let a = sni_spec("api.example.test", &api);
    let server = Server::start(&["--sni", &a, "--strict-sni"]);
    let session = dir.path().join("session.pem");
    assert!(!resumes(
        &server,
        "-tls1_2",
        "api.example.test",
        &session,
        true
    ));
    let out = s_client_full(
        server.addr,
        &[
            "-tls1_2",
            "-servername",
            "unknown.test",
            "-sess_in",
            session.to_str().unwrap(),
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("Hello, secure world!"), "{text}");
    server.logs.wait_for(&[
        "result=handshake_failed",
        "kind=unknown_name",
        "sni=unknown.test",
    ]);
}
