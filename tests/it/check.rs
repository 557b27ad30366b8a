//! `securesock check`: the dry run, through the real binary. Each problem is one line naming it
//! (`SERVICE: error: ...`) and exit 1; a configuration that would start exits 0 and says how long
//! its certificate has left.

// On the binary: `check` is a command line, its stdout and its exit code.

use std::net::TcpListener;
use std::path::Path;
use std::process::Command;

use crate::support::{
    CertPair, Server, binary, default_certs, mtls, now_unix, write_cert, write_cert_for,
};

/// What `securesock check ARGS` said: its exit code and its stdout lines.
struct Checked {
    code: Option<i32>,
    lines: Vec<String>,
}

impl Checked {
    /// The one line starting with `prefix`, or a panic showing everything said.
    fn line(&self, prefix: &str, part: &str) -> &str {
        self.lines
            .iter()
            .find(|l| l.starts_with(prefix) && l.contains(part))
            .unwrap_or_else(|| panic!("no {prefix:?} line with {part:?} in {:#?}", self.lines))
    }

    fn errors(&self) -> Vec<&String> {
        self.lines
            .iter()
            .filter(|l| l.contains(": error: "))
            .collect()
    }
}

fn check(args: &[&str]) -> Checked {
    let out = Command::new("timeout")
        .arg("30")
        .arg(binary())
        .arg("check")
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    Checked {
        code: out.status.code(),
        lines: stdout.lines().map(str::to_string).collect(),
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `check --listen 127.0.0.1:0 --cert C --key K` plus `args`.
fn check_with(pair: &CertPair, args: &[&str]) -> Checked {
    let mut all = vec![
        "--listen",
        "127.0.0.1:0",
        "--cert",
        s(&pair.cert),
        "--key",
        s(&pair.key),
    ];
    all.extend_from_slice(args);
    check(&all)
}

#[test]
fn a_good_configuration_exits_0_with_its_expiry() {
    let certs = default_certs();
    let out = check_with(certs, &[]);
    assert_eq!(out.code, Some(0), "{:#?}", out.lines);
    assert!(out.errors().is_empty(), "{:#?}", out.lines);
    let expiry = out.line("default: ok: certificate ", "expires in ");
    assert!(expiry.contains(s(&certs.cert)), "{expiry}");
    out.line("default: ok: key ", "matches certificate");
    out.line("default: ok: TLS context builds", "");
    out.line("default: ok: listen 127.0.0.1:0 is free", "");
}

#[test]
fn a_key_of_another_certificate_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let a = write_cert_for(dir.path(), "a.test");
    let b = write_cert_for(dir.path(), "b.test");
    let mixed = CertPair {
        cert: a.cert.clone(),
        key: b.key.clone(),
    };
    let out = check_with(&mixed, &[]);
    assert_eq!(out.code, Some(1), "{:#?}", out.lines);
    // The check's own line, not the context build's ("TLS context: ...") saying the same.
    out.line(
        "default: error: key ",
        &format!(
            "key {} does not match certificate {}",
            s(&b.key),
            s(&a.cert)
        ),
    );
}

#[test]
fn an_expired_certificate_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let now = now_unix();
    let old = write_cert(dir.path(), "old", now - 10 * 86_400, now - 86_400);
    let out = check_with(&old, &[]);
    assert_eq!(out.code, Some(1), "{:#?}", out.lines);
    out.line(
        "default: error: certificate ",
        &format!("certificate {} expired on", s(&old.cert)),
    );
    // Once: the context build's refusal says the same and is not repeated.
    assert_eq!(out.errors().len(), 1, "{:#?}", out.lines);
}

#[test]
fn a_certificate_expiring_soon_is_a_warning_and_still_starts() {
    let dir = tempfile::tempdir().unwrap();
    let now = now_unix();
    let soon = write_cert(dir.path(), "soon", now - 86_400, now + 5 * 86_400 + 3600);
    let out = check_with(&soon, &[]);
    assert_eq!(out.code, Some(0), "{:#?}", out.lines);
    out.line("default: warning: certificate ", "expires in 5 days");
}

#[test]
fn an_sni_name_its_certificate_is_not_for_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let a = write_cert_for(dir.path(), "a.test");
    let wild = write_cert_for(dir.path(), "*.example.test");
    let sni_b = format!("b.test={},{}", s(&a.cert), s(&a.key));
    let sni_a = format!("a.test={},{}", s(&a.cert), s(&a.key));
    let sni_w = format!("www.example.test={},{}", s(&wild.cert), s(&wild.key));
    let out = check_with(
        default_certs(),
        &["--sni", &sni_a, "--sni", &sni_b, "--sni", &sni_w],
    );
    assert_eq!(out.code, Some(1), "{:#?}", out.lines);
    out.line(
        "default: error: ",
        &format!(
            "sni name b.test is not covered by certificate {}",
            s(&a.cert)
        ),
    );
    out.line("default: ok: sni name a.test is covered", "");
    out.line("default: ok: sni name www.example.test is covered", "");
    assert_eq!(out.errors().len(), 1, "{:#?}", out.lines);
}

#[test]
fn an_upstream_that_does_not_resolve_is_named() {
    // RFC 2606: .invalid never resolves.
    let out = check_with(
        default_certs(),
        &["--mode", "forward", "--upstream", "nothing.invalid:80"],
    );
    assert_eq!(out.code, Some(1), "{:#?}", out.lines);
    out.line("default: error: ", "upstream nothing.invalid:80");
}

#[test]
fn a_port_in_use_names_the_process_holding_it() {
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap().to_string();
    let certs = default_certs();
    let out = check(&[
        "--listen",
        &addr,
        "--cert",
        s(&certs.cert),
        "--key",
        s(&certs.key),
    ]);
    assert_eq!(out.code, Some(1), "{:#?}", out.lines);
    let line = out.line("default: error: ", &format!("listen {addr} is in use"));
    assert!(
        line.contains(&format!("held by pid {} (", std::process::id())),
        "{line}"
    );
    drop(held);
}

#[test]
fn a_port_a_running_securesock_holds_is_a_warning_for_its_reload() {
    let running = Server::start(&[]);
    let addr = running.addr.to_string();
    let certs = default_certs();
    let out = check(&[
        "--listen",
        &addr,
        "--cert",
        s(&certs.cert),
        "--key",
        s(&certs.key),
    ]);
    assert_eq!(out.code, Some(0), "{:#?}", out.lines);
    let line = out.line("default: warning: ", &format!("listen {addr} is in use"));
    assert!(
        line.contains(&format!("held by pid {} (securesock)", running.pid())),
        "{line}"
    );
}

#[test]
fn a_file_is_checked_service_by_service() {
    let dir = tempfile::tempdir().unwrap();
    let certs = default_certs();
    let sock = dir.path().join("plain.sock");
    let path = dir.path().join("securesock.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[defaults]
cert = "{cert}"
key = "{key}"

[[service]]
name = "web"
listen = "127.0.0.1:0"

[[service]]
name = "api"
listen = "unix:{sock}"
mode = "forward"
upstream = "nothing.invalid:80"
"#,
            cert = s(&certs.cert),
            key = s(&certs.key),
            sock = s(&sock),
        ),
    )
    .unwrap();
    let out = check(&["--config", s(&path)]);
    assert_eq!(out.code, Some(1), "{:#?}", out.lines);
    out.line("web: ok: certificate ", "expires in ");
    out.line("web: ok: listen 127.0.0.1:0 is free", "");
    out.line("api: ok: listen unix:", "is free");
    out.line("api: error: ", "upstream nothing.invalid:80");
    assert_eq!(out.errors().len(), 1, "{:#?}", out.lines);
}

#[test]
fn a_unix_path_is_free_stale_live_or_not_a_socket() {
    let dir = tempfile::tempdir().unwrap();
    let certs = default_certs();
    let at = |path: &Path| {
        let listen = format!("unix:{}", s(path));
        check(&[
            "--listen",
            &listen,
            "--cert",
            s(&certs.cert),
            "--key",
            s(&certs.key),
        ])
    };
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let out = at(&stale);
    assert_eq!(out.code, Some(0), "{:#?}", out.lines);
    out.line("default: ok: listen unix:", "is a stale socket");
    assert!(stale.exists(), "the check removes nothing");

    let live = dir.path().join("live.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&live).unwrap();
    let out = at(&live);
    assert_eq!(out.code, Some(1), "{:#?}", out.lines);
    out.line("default: error: listen unix:", "is a live socket");

    let file = dir.path().join("data");
    std::fs::write(&file, b"precious").unwrap();
    let out = at(&file);
    assert_eq!(out.code, Some(1), "{:#?}", out.lines);
    out.line("default: error: listen unix:", "is not a socket");
}

#[test]
fn a_chain_out_of_order_is_a_warning_and_the_client_ca_and_crl_load() {
    let dir = tempfile::tempdir().unwrap();
    let pem = |name: &str| std::fs::read(mtls(name)).unwrap();
    let in_order = dir.path().join("in-order.pem");
    std::fs::write(
        &in_order,
        [pem("server-cert.pem"), pem("ca-cert.pem")].concat(),
    )
    .unwrap();
    let out_of_order = dir.path().join("out-of-order.pem");
    std::fs::write(
        &out_of_order,
        [
            pem("server-cert.pem"),
            pem("other-ca-cert.pem"),
            pem("ca-cert.pem"),
        ]
        .concat(),
    )
    .unwrap();
    let key = mtls("server-key.pem");
    let (ca, crl) = (mtls("ca-cert.pem"), mtls("crl.pem"));
    let with = |cert: &Path| {
        check(&[
            "--listen",
            "127.0.0.1:0",
            "--cert",
            s(cert),
            "--key",
            &key,
            "--client-ca",
            &ca,
            "--crl",
            &crl,
        ])
    };
    let out = with(&in_order);
    assert_eq!(out.code, Some(0), "{:#?}", out.lines);
    out.line(
        "default: ok: chain ",
        "2 certificates, each issued by the next",
    );
    out.line("default: ok: chain certificate 2 in ", "expires in ");
    out.line(&format!("default: ok: client CA {ca}: 1 certificate"), "");
    out.line(&format!("default: ok: CRL {crl}: 1 CRL, current"), "");

    let out = with(&out_of_order);
    assert_eq!(out.code, Some(0), "{:#?}", out.lines);
    out.line(
        "default: warning: chain ",
        "certificate 2 (CN=unrelated test CA) did not issue certificate 1",
    );
}
