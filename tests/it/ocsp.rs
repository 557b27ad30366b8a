//! OCSP stapling from a file (`--ocsp-response`): a response made by the real `openssl ocsp` from
//! the `scripts/gen-ca.sh` CA is stapled for clients that ask; a stale one is refused at start.

// A refused start is an exit code and a reload failure a line on stderr, so those stay on the
// binary.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support;
use crate::support::{InProcess, Server, binary, mtls, s_client_full};

/// The gen-ca.sh server certificate with its CA after it (OCSP names a certificate by its issuer).
fn chain(dir: &Path) -> PathBuf {
    let both = [
        fs::read(mtls("server-cert.pem")).unwrap(),
        fs::read(mtls("ca-cert.pem")).unwrap(),
    ]
    .concat();
    let path = dir.join("chain.pem");
    fs::write(&path, both).unwrap();
    path
}

fn openssl(args: &[&str], fake_time: Option<&str>) {
    let mut cmd = match fake_time {
        // libfaketime moves the clock for this one command: a response that is already stale.
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

/// A DER response from the test CA saying the server certificate is good, valid one day from
/// now, or from two days ago when `stale`.
fn response(dir: &Path, name: &str, stale: bool) -> PathBuf {
    let serial = support::serial_of(Path::new(&mtls("server-cert.pem")));
    let index = dir.join("index.txt");
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
    let out = dir.join(name);
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
            "-ndays",
            "1",
        ],
        stale.then_some("-2d"),
    );
    out
}

#[test]
fn a_current_response_is_stapled_for_clients_that_ask() {
    let dir = tempfile::tempdir().unwrap();
    let resp = response(dir.path(), "good.der", false);
    let server = InProcess::start_with(
        &chain(dir.path()),
        Path::new(&mtls("server-key.pem")),
        &["--ocsp-response", resp.to_str().unwrap()],
    );
    let out = s_client_full(server.addr, &["-CAfile", &mtls("ca-cert.pem"), "-status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("OCSP Response Status: successful"), "{text}");
    assert!(text.contains("Cert Status: good"), "{text}");
    assert!(text.contains("Hello, secure world!"), "{text}");
    // A client that does not ask gets no staple.
    let plain = s_client_full(server.addr, &["-CAfile", &mtls("ca-cert.pem")]);
    assert!(!String::from_utf8_lossy(&plain.stdout).contains("OCSP Response Status"));
}

#[test]
fn a_stale_or_unrelated_response_is_refused_at_start() {
    if !support::require_tool(
        "faketime",
        "an OCSP response made two days ago, already stale",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let chain = chain(dir.path());
    let start = |cert: &Path, resp: &Path| {
        Command::new("timeout")
            .arg("20")
            .arg(binary())
            .args(["--listen", "127.0.0.1:0", "--cert"])
            .arg(cert)
            .arg("--key")
            .arg(mtls("server-key.pem"))
            .arg("--ocsp-response")
            .arg(resp)
            .output()
            .unwrap()
    };
    let stale = response(dir.path(), "stale.der", true);
    let out = start(&chain, &stale);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("out of date"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    // The right response for another certificate (the default self-signed one) does not match.
    let good = response(dir.path(), "good.der", false);
    let certs = support::default_certs();
    let out = Command::new("timeout")
        .arg("20")
        .arg(binary())
        .args(["--listen", "127.0.0.1:0", "--cert"])
        .arg(&certs.cert)
        .arg("--key")
        .arg(&certs.key)
        .arg("--ocsp-response")
        .arg(&good)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("issuer"));
}

#[test]
fn a_stale_replacement_is_refused_on_reload_and_the_current_one_kept() {
    if !support::require_tool(
        "faketime",
        "an OCSP response made two days ago, already stale",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let good = response(dir.path(), "good.der", false);
    let stale = response(dir.path(), "stale.der", true);
    let served = dir.path().join("served.der");
    fs::copy(&good, &served).unwrap();
    let server = Server::start_with(
        &chain(dir.path()),
        Path::new(&mtls("server-key.pem")),
        &[
            "--ocsp-response",
            served.to_str().unwrap(),
            "--watch-interval",
            "0.2",
        ],
    );
    fs::copy(&stale, &served).unwrap();
    let line = server.logs.wait_for(&["reload failed trigger=file_change"]);
    assert!(line.contains("out of date"), "{line}");
    let out = s_client_full(server.addr, &["-CAfile", &mtls("ca-cert.pem"), "-status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Cert Status: good"), "{text}");
}
